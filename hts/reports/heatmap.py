"""Plate heatmaps: one value per well, drawn as the plate is laid out.

Rows run down (A, B, ... and AA..AF on 1536-well plates), columns across (1, 2, ...),
A01 at the top left, as on the plate itself. The layout is sized in inches per plate
type so that every plate stays readable:

- up to 96 wells: large cells with each well's value printed in it;
- 384 wells: smaller cells, every row and column labelled;
- 1536 wells: small cells, thin labels on every other row and column.

Wells with no value (missing from ``values`` or not finite) are light grey and hatched;
flagged wells are outlined in red and counted in the legend ("flagged (n)"), with the
reasons, grouped, listed under it. Colour limits default to the 2nd–98th percentile of
the values, so one outlier well does not wash out the plate; wells beyond the limits get
the end colours and the colour bar grows a pointed end. ``diverging=True`` centres a
diverging map on 0 (z-scores, log fold changes).

>>> png = plate_heatmap({"A01": 1.0, "B03": 2.5}, plate_type=96, label="nuclei per field")
>>> png[:4]
b'\\x89PNG'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.patches import Patch, Rectangle
from matplotlib.patheffects import Normal, Stroke

from hts.reports._render import new_figure, to_png
from hts.wells import PLATE_TYPES, PlateType, WellRef, parse_well

__all__ = ["plate_heatmap"]

DPI = 150
FLAG_COLOR = "#e41a1c"
MISSING_FACE = "#e6e6e6"
MISSING_HATCH = "#a8a8a8"
_MAX_REASON_LINES = 6


@dataclass(frozen=True)
class _Style:
    cell_in: float  # edge of one well's square
    tick_fontsize: float
    tick_every: int  # label every n-th row / column
    value_fontsize: float | None  # print values in the cells (None: no)
    grid_lw: float
    flag_lw: float


def _style(plate: PlateType) -> _Style:
    if plate.wells <= 48:
        return _Style(0.62, 9.5, 1, 8.5, 1.2, 2.2)
    if plate.wells <= 96:
        return _Style(0.5, 9.0, 1, 6.8, 1.0, 1.8)
    if plate.wells <= 384:
        return _Style(0.3, 7.0, 1, None, 0.6, 1.4)
    return _Style(0.19, 5.5, 2, None, 0.35, 1.1)


@dataclass(frozen=True)
class _Layout:
    """Where things go, in inches from the figure's bottom-left corner."""

    width: float
    height: float
    plate_left: float
    plate_bottom: float
    plate_width: float
    plate_height: float
    cbar_left: float
    cbar_width: float
    legend_height: float

    def cell_center_px(self, row: int, column: int, plate: PlateType, dpi: float = DPI) -> tuple[float, float]:
        """Pixel (y, x) of a well's centre in the PNG (rows counted from the top)."""
        cell_w = self.plate_width / plate.columns
        cell_h = self.plate_height / plate.rows
        x = self.plate_left + (column + 0.5) * cell_w
        y_top = self.height - (self.plate_bottom + self.plate_height) + (row + 0.5) * cell_h
        return y_top * dpi, x * dpi


def _layout(plate: PlateType, st: _Style, *, title: bool, legend_lines: int) -> _Layout:
    plate_w = plate.columns * st.cell_in
    plate_h = plate.rows * st.cell_in
    left = 0.5
    top = (0.4 if title else 0.1) + 0.3  # title, then the column numbers
    gap, cbar_w, cbar_right = 0.2, 0.18, 1.05  # colour bar: its ticks and label to the right
    legend_h = 0.16 + (0.28 if legend_lines else 0.0) + 0.17 * max(legend_lines - 1, 0)
    bottom = max(legend_h, 0.15)
    width = left + plate_w + gap + cbar_w + cbar_right
    height = bottom + plate_h + top
    return _Layout(width, height, left, bottom, plate_w, plate_h, left + plate_w + gap, cbar_w, legend_h)


def _grid(mapping: Mapping[str, object], plate: PlateType, what: str) -> dict[WellRef, object]:
    out: dict[WellRef, object] = {}
    for key, value in mapping.items():
        try:
            well = parse_well(key)
        except ValueError:
            raise ValueError(f"{what}: {key!r} is not a well name") from None
        if well.row >= plate.rows or well.column >= plate.columns:
            raise ValueError(f"{what}: well {well.name} is not on a {plate.wells}-well plate")
        out[well] = value
    return out


def _limits(finite: np.ndarray, vmin: float | None, vmax: float | None, diverging: bool) -> tuple[float, float]:
    if finite.size:
        p_lo, p_hi = (float(p) for p in np.percentile(finite, [2, 98]))
        if p_hi <= p_lo:
            p_lo, p_hi = float(finite.min()), float(finite.max())
    else:
        p_lo, p_hi = (-1.0, 1.0) if diverging else (0.0, 1.0)
    if diverging:
        m = max(abs(p_lo), abs(p_hi)) or 1.0
        p_lo, p_hi = -m, m
    lo = p_lo if vmin is None else float(vmin)
    hi = p_hi if vmax is None else float(vmax)
    if not hi > lo:  # a flat plate (or limits given the wrong way round)
        half = 0.5 * (abs(lo) * 0.1 or 1.0)
        lo, hi = lo - half, lo + half
    return lo, hi


def _fmt(v: float) -> str:
    """A value short enough for its cell: 3 significant digits, no exponent below 100 000."""
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e5 or a < 1e-3:
        return f"{v:.1e}".replace("e+0", "e").replace("e-0", "e-")
    if a >= 1000:
        return f"{v:.0f}"
    return f"{v:.3g}"


def _reason_lines(flags: dict[WellRef, str], max_chars: int) -> list[str]:
    by_reason: dict[str, list[WellRef]] = {}
    for well, reason in sorted(flags.items()):
        by_reason.setdefault(" ".join(str(reason or "flagged").split()), []).append(well)
    lines = []
    for reason, wells in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        head = f"{reason} ({len(wells)}): "
        names = ", ".join(w.name for w in wells)
        line = head + names
        if len(line) > max_chars:
            line = line[: max(max_chars - 1, len(head) + 3)].rsplit(",", 1)[0] + ", …"
        lines.append(line)
    if len(lines) > _MAX_REASON_LINES:
        rest = len(lines) - (_MAX_REASON_LINES - 1)
        lines = lines[: _MAX_REASON_LINES - 1] + [f"… and {rest} more reasons"]
    return lines


def plate_heatmap(
    values: Mapping[str, float],
    *,
    plate_type: int,
    title: str = "",
    label: str = "",
    flags: Mapping[str, str] | None = None,
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    diverging: bool = False,
    annotate: bool | None = None,
    marks: Mapping[str, str] | None = None,
) -> bytes:
    """A PNG heatmap of one value per well of a ``plate_type``-well plate.

    ``values`` maps well names ("B03", "B3", "AF48") to numbers; wells left out or with
    a non-finite value are drawn as "no value". ``flags`` maps well names to the reason
    they are flagged (outlined in red). ``label`` names the colour bar. ``cmap`` defaults
    to ``viridis``, or ``RdBu_r`` with ``diverging``. Colour limits not given default to
    the 2nd/98th percentile of the finite values (symmetric about 0 with ``diverging``).
    ``annotate`` prints each value in its well (default: plates of up to 96 wells).
    ``marks`` maps well names to a short text drawn in the well instead of its value
    (e.g. ``"+"`` / ``"−"`` for the positive and negative controls of a layout map).

    Raises ``ValueError`` for an unknown plate type or a key that is not a well of it.
    """
    if plate_type not in PLATE_TYPES:
        raise ValueError(f"unknown plate type {plate_type!r}; one of {sorted(PLATE_TYPES)}")
    plate = PLATE_TYPES[plate_type]
    st = _style(plate)
    grid = np.full((plate.rows, plate.columns), np.nan)
    for well, v in _grid(values, plate, "values").items():
        try:
            grid[well.row, well.column] = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pass  # None or text: no value
    grid[~np.isfinite(grid)] = np.nan
    flagged = {w: str(r) for w, r in _grid(flags or {}, plate, "flags").items()}
    finite = grid[np.isfinite(grid)]
    n_missing = int(grid.size - finite.size)

    lo, hi = _limits(finite, vmin, vmax, diverging)
    norm = TwoSlopeNorm(0.0, lo, hi) if diverging and lo < 0 < hi else Normalize(lo, hi)
    cm = colormaps[cmap or ("RdBu_r" if diverging else "viridis")].with_extremes(bad=(0, 0, 0, 0))
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
        (bool(finite.size and finite.min() < lo), bool(finite.size and finite.max() > hi))
    ]

    legend_entries = int(n_missing > 0) + int(bool(flagged))
    lay0 = _layout(plate, st, title=bool(title), legend_lines=1)
    reasons = _reason_lines(flagged, max_chars=int((lay0.width - 0.6) * 72 / (7.5 * 0.55))) if flagged else []
    lay = _layout(plate, st, title=bool(title), legend_lines=(1 if legend_entries else 0) + len(reasons))

    with new_figure(lay.width, lay.height, DPI) as fig:
        W, H = lay.width, lay.height
        ax = fig.add_axes((lay.plate_left / W, lay.plate_bottom / H, lay.plate_width / W, lay.plate_height / H))
        extent = (-0.5, plate.columns - 0.5, plate.rows - 0.5, -0.5)
        # "No value" shows through the transparent (bad) cells: one hatched grey backdrop.
        backdrop = Rectangle(
            (-0.5, -0.5),
            plate.columns,
            plate.rows,
            facecolor=MISSING_FACE,
            edgecolor="none",
            hatch="////" if plate.wells <= 384 else "///",
            zorder=-1,
        )
        if hasattr(backdrop, "set_hatchcolor"):  # matplotlib >= 3.10
            backdrop.set_hatchcolor(MISSING_HATCH)
            backdrop.set_hatch_linewidth(0.6 if plate.wells <= 384 else 0.4)
        else:  # older: the hatch takes the edge colour
            backdrop.set_edgecolor(MISSING_HATCH)
            backdrop.set_linewidth(0)
        ax.add_patch(backdrop)
        ax.imshow(np.ma.masked_invalid(grid), cmap=cm, norm=norm, interpolation="nearest", extent=extent, zorder=0)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("equal")

        # Cell borders as white minor-grid lines; labels on top and left, like the plate.
        ax.set_xticks(np.arange(-0.5, plate.columns, 1.0), minor=True)
        ax.set_yticks(np.arange(-0.5, plate.rows, 1.0), minor=True)
        ax.grid(which="minor", color="white", linewidth=st.grid_lw)
        ax.tick_params(which="minor", length=0)
        cols = np.arange(0, plate.columns, st.tick_every)
        rows = np.arange(0, plate.rows, st.tick_every)
        ax.set_xticks(cols, [str(c + 1) for c in cols])
        ax.set_yticks(rows, [plate.row_names[r] for r in rows])
        ax.xaxis.tick_top()
        ax.tick_params(which="major", length=2, width=0.6, pad=1.5, labelsize=st.tick_fontsize)
        for spine in ax.spines.values():
            spine.set_linewidth(0.6)
            spine.set_color("#555555")

        marked = {(w.row, w.column): str(t) for w, t in _grid(marks or {}, plate, "marks").items()}
        for (r, c), text in marked.items():
            ax.text(
                c,
                r,
                text,
                ha="center",
                va="center",
                fontsize=max(st.value_fontsize or 0, 6) + 2,
                fontweight="bold",
                color="black",
                zorder=4,
            )
        show_values = (plate.wells <= 96) if annotate is None else annotate
        if show_values and st.value_fontsize:
            for (r, c), v in np.ndenumerate(grid):
                if np.isfinite(v) and (r, c) not in marked:
                    rgba = cm(norm(v))
                    luminance = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
                    ax.text(
                        c,
                        r,
                        _fmt(float(v)),
                        ha="center",
                        va="center",
                        fontsize=st.value_fontsize,
                        color="black" if luminance > 0.5 else "white",
                    )

        inset = 0.07
        for well in flagged:
            ax.add_patch(
                Rectangle(
                    (well.column - 0.5 + inset, well.row - 0.5 + inset),
                    1 - 2 * inset,
                    1 - 2 * inset,
                    fill=False,
                    edgecolor=FLAG_COLOR,
                    linewidth=st.flag_lw,
                    zorder=3,
                    # a dark halo keeps the outline visible on red cells of a diverging map
                    path_effects=[Stroke(linewidth=st.flag_lw + 0.8, foreground="black"), Normal()],
                )
            )

        cax = fig.add_axes((lay.cbar_left / W, lay.plate_bottom / H, lay.cbar_width / W, lay.plate_height / H))
        cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cm), cax=cax, extend=extend, extendfrac=0.04)
        cbar.ax.tick_params(labelsize=8, length=2.5, width=0.6)
        cbar.outline.set_linewidth(0.6)
        if isinstance(norm, TwoSlopeNorm):
            cbar.ax.set_yscale("linear")
        if label:
            cbar.set_label(label, fontsize=9)

        if title:
            fig.text(0.5, 1 - 0.12 / H, title, ha="center", va="top", fontsize=11, fontweight="bold")

        if legend_entries:
            handles = []
            if n_missing:
                handles.append(
                    Patch(
                        facecolor=MISSING_FACE,
                        edgecolor=MISSING_HATCH,
                        hatch="////",
                        linewidth=0.6,
                        label=f"no value ({n_missing})",
                    )
                )
            if flagged:
                handles.append(
                    Patch(facecolor="none", edgecolor=FLAG_COLOR, linewidth=1.6, label=f"flagged ({len(flagged)})")
                )
            top = (lay.legend_height - 0.1) / H
            fig.legend(
                handles=handles,
                loc="upper left",
                bbox_to_anchor=(lay.plate_left / W - 0.01, top),
                ncol=len(handles),
                frameon=False,
                fontsize=8,
                handlelength=1.6,
                handleheight=1.0,
                borderaxespad=0.0,
                borderpad=0.0,
                columnspacing=1.5,
            )
            for i, line in enumerate(reasons):
                y = lay.legend_height - 0.1 - 0.28 - 0.17 * i
                fig.text(lay.plate_left / W, y / H, line, ha="left", va="top", fontsize=7.5, color="#333333")
        return to_png(fig)


def _cell_center_px(well: str, plate_type: int, *, title: bool, legend_lines: int) -> tuple[int, int]:
    """Pixel (y, x) of a well's centre in a :func:`plate_heatmap` PNG (for tests)."""
    plate = PLATE_TYPES[plate_type]
    w = parse_well(well)
    y, x = _layout(plate, _style(plate), title=title, legend_lines=legend_lines).cell_center_px(w.row, w.column, plate)
    return int(math.floor(y)), int(math.floor(x))
