"""Figures to PNG bytes with Agg, outside pyplot (so no figure is ever registered or leaked)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from matplotlib import style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@contextmanager
def new_figure(width_in: float, height_in: float, dpi: float) -> Iterator[Figure]:
    """A detached Agg figure drawn with matplotlib's default style (whatever the user's rc says)."""
    with style.context("default"):
        fig = Figure(figsize=(width_in, height_in), dpi=dpi)
        FigureCanvasAgg(fig)
        try:
            yield fig
        finally:
            fig.clear()


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes at its own size and dpi (no tight bounding box: sizes stay predictable)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
    return buf.getvalue()


def read_png(png: bytes) -> np.ndarray:
    """Decode PNG bytes to a float RGB(A) array in 0..1 (rows, columns, 3 or 4)."""
    from matplotlib import image

    if not bytes(png[:8]) == PNG_SIGNATURE:
        raise ValueError("not a PNG image")
    return image.imread(io.BytesIO(png), format="png")
