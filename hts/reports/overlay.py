"""Segmentation overlays: a field's channels composited, with each output's object outlines.

- One channel is shown in grey; several are added in colour, by name where the name says
  what it is (DAPI/Hoechst blue, FITC/GFP green, TRITC/Cy3/RFP red, Cy5 magenta,
  brightfield grey), otherwise from a fixed palette. Each channel is stretched on its own
  robust range, the 1st to the 99.8th percentile.
- Outlines are ``skimage.segmentation.find_boundaries(labels, mode="inner")``: the object
  pixels that touch another label or the background, so touching objects stay apart. Each
  output gets its own colour (nuclei cyan, cells yellow, foci magenta by name, otherwise a
  fixed palette); outputs are drawn in order, a later one on top where outlines coincide.
- The legend lists the channels and, per output, its number of objects.
- A scale bar is drawn when the pixel size is known.
- Fields larger than ``max_size`` are shrunk by an integer factor: channels by block mean,
  outlines by "any outline pixel in the block", so small objects (foci) do not vanish.

The image is pasted into the PNG pixel for pixel (no resampling), so outline colours in
the PNG are exact.

:func:`contact_sheet` lays several such PNGs out on one sheet with captions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.patheffects import withStroke
from skimage.segmentation import find_boundaries

from hts.compute.measure.features import object_ids
from hts.reports._render import new_figure, read_png, to_png

__all__ = [
    "segmentation_overlay",
    "contact_sheet",
    "channel_color",
    "output_colors",
    "shown_channels",
    "OUTLINE_PALETTE",
]

DPI = 100
_PAD = 8  # px around the image
_PANEL = 230  # px, legend panel right of the image
_TITLE = 30  # px
_ENTRY = 22  # px per legend entry

# name fragment -> additive colour of a channel
_CHANNEL_COLORS = (
    (("dapi", "hoechst", "dna", "405"), "#3366ff"),
    (("fitc", "gfp", "488", "alexa488", "green"), "#00ff00"),
    (("tritc", "cy3", "rfp", "mcherry", "568", "594", "555", "red"), "#ff0000"),
    (("cy5", "647", "640", "far"), "#ff00ff"),
    (("bright", "mono", "dic", "phase", "bf", "trans"), "#ffffff"),
)
_CHANNEL_PALETTE = ("#00ff00", "#ff0000", "#3366ff", "#ff00ff", "#00ffff", "#ffff00")

# name fragment -> outline colour of an output
_OUTPUT_COLORS = (
    (("nuc",), "#00ffff"),
    (("cell", "cyto", "body"), "#ffff00"),
    (("foci", "focus", "spot", "punct"), "#ff00ff"),
)
OUTLINE_PALETTE = ("#00ffff", "#ffff00", "#ff00ff", "#ff8000", "#80ff00", "#ffffff")


def channel_color(name: str, index: int = 0) -> str:
    """The additive display colour of a channel by its name (``index`` picks a fallback)."""
    low = name.lower()
    for keys, color in _CHANNEL_COLORS:
        if any(k in low for k in keys):
            return color
    return _CHANNEL_PALETTE[index % len(_CHANNEL_PALETTE)]


def shown_channels(channels: Sequence[str], read: Mapping[str, str]) -> list[int]:
    """The channels an overlay shows: those the engine read when one is brightfield (a brightfield-unet run is
    judged on its brightfield channel), else the fluorescence channels (transmitted light washes out a composite).
    ``read``: the run's role -> channel name."""
    from hts.compute.segment.engines.base import BRIGHTFIELD_NAMES

    channels = list(channels)
    read_idx = [channels.index(c) for c in read.values() if c in channels]
    if any(channels[i].lower().startswith(BRIGHTFIELD_NAMES) for i in read_idx):
        return read_idx
    return [i for i, c in enumerate(channels) if not c.lower().startswith(BRIGHTFIELD_NAMES)] or list(
        range(len(channels))
    )


def output_colors(names: Sequence[str], colors: Mapping[str, str] | None = None) -> dict[str, str]:
    """Outline colour per output (or label image) name: ``colors`` where given, else by name, else the palette."""
    colors = colors or {}
    out: dict[str, str] = {}
    for name in names:
        if name in colors:
            out[name] = colors[name]
            continue
        low = name.lower()
        guess = next((c for keys, c in _OUTPUT_COLORS if any(k in low for k in keys)), None)
        if guess is None or guess in out.values():
            guess = next((c for c in OUTLINE_PALETTE if c not in out.values()), OUTLINE_PALETTE[0])
        out[name] = guess
    return out


def _stretch(channel: np.ndarray) -> np.ndarray:
    """0..1 float32 from the channel's 1st..99.8th percentile (finite pixels; NaN -> 0)."""
    x = np.asarray(channel, dtype=np.float32)
    step = max(1, int(math.sqrt(x.size / 1_000_000)))  # percentiles from at most ~1 Mpx
    sample = x[::step, ::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return np.zeros(x.shape, np.float32)
    lo, hi = (float(v) for v in np.percentile(sample, [1.0, 99.8]))
    if hi <= lo:
        hi = float(sample.max())
        if hi <= lo:
            return np.where(np.isfinite(x) & (x > lo), 1.0, 0.0).astype(np.float32)
    out = (x - lo) / (hi - lo)
    return np.nan_to_num(np.clip(out, 0.0, 1.0), nan=0.0).astype(np.float32)


def _pad_to(a: np.ndarray, f: int, mode: str) -> np.ndarray:
    h, w = a.shape[:2]
    ph, pw = (-h) % f, (-w) % f
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)) + ((0, 0),) * (a.ndim - 2), mode=mode)
    return a


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    a = _pad_to(a, f, "edge")
    h, w = a.shape[:2]
    return a.reshape(h // f, f, w // f, f, *a.shape[2:]).mean(axis=(1, 3))


def _block_any(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    a = _pad_to(a, f, "constant")
    h, w = a.shape
    return a.reshape(h // f, f, w // f, f).any(axis=(1, 3))


def _nice_length(target: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above ``target``."""
    if target <= 0:
        return 0.0
    k = math.floor(math.log10(target))
    for m in (5, 2, 1):
        if m * 10**k <= target:
            return float(m * 10**k)
    return float(10**k)


def _length_label(um: float) -> str:
    if um >= 1000:
        return f"{um / 1000:g} mm"
    if um < 1:
        return f"{um * 1000:g} nm"
    return f"{um:g} µm"


def _overlay_layout(h: int, w: int, *, title: bool, entries: int) -> tuple[int, int, int, int]:
    """(figure width, figure height, image top, image left) in pixels."""
    top = _PAD + (_TITLE if title else 0)
    width = _PAD + w + 12 + _PANEL
    height = max(top + h + _PAD, top + 24 + _ENTRY * entries + _PAD)
    return width, height, top, _PAD


def segmentation_overlay(
    channels: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    *,
    colors: Mapping[str, str] | None = None,
    pixel_size_um: float | None = None,
    title: str = "",
    max_size: int = 1024,
) -> bytes:
    """A PNG of one field: its channels composited, each output's object outlines on top.

    ``channels`` maps channel names to 2-D images, ``labels`` output names (``nuclei``,
    ``cells``, ``foci``) to 2-D label images of the same shape (0 = background).
    ``colors`` overrides the colour of a channel or an output by its name (any matplotlib
    colour). ``pixel_size_um`` adds a scale bar. Fields larger than ``max_size`` pixels on
    a side are shrunk by the smallest integer factor that fits.

    Raises ``ValueError`` when there is no channel or the shapes disagree.
    """
    if not channels:
        raise ValueError("segmentation_overlay needs at least one channel")
    colors = dict(colors or {})
    imgs = {name: np.asarray(a) for name, a in channels.items()}
    shape = next(iter(imgs.values())).shape
    for kind, mapping in (("channel", imgs), ("labels", {k: np.asarray(v) for k, v in labels.items()})):
        for name, a in mapping.items():
            if a.ndim != 2 or a.shape != shape:
                raise ValueError(
                    f"{kind} {name!r} has shape {a.shape}; every channel and label image must be 2-D {shape}"
                )
    if len(shape) != 2:
        raise ValueError(f"channels must be 2-D images, got shape {shape}")
    f = max(1, math.ceil(max(shape) / max(int(max_size), 1)))

    # Channels: grey, or an additive colour composite.
    if len(imgs) == 1:
        ((name, img),) = imgs.items()
        chan_colors = {name: colors.get(name, "#ffffff")}
    else:
        chan_colors = {name: colors.get(name) or channel_color(name, i) for i, name in enumerate(imgs)}
    rgb = np.zeros((*shape, 3), np.float32)
    for name, img in imgs.items():
        rgb += _stretch(img)[..., None] * np.asarray(to_rgb(chan_colors[name]), np.float32)
    rgb = _block_mean(np.clip(rgb, 0.0, 1.0), f)
    rgb8 = np.round(rgb * 255).astype(np.uint8)

    # Outlines, one colour per output, later outputs on top.
    out_colors = output_colors(list(labels), colors)
    counts: dict[str, int] = {}
    for name, lab in labels.items():
        lab = np.asarray(lab)
        counts[name] = len(object_ids(lab))
        edges = _block_any(find_boundaries(lab, mode="inner"), f)
        rgb8[edges] = np.round(np.asarray(to_rgb(out_colors[name])) * 255).astype(np.uint8)

    h, w = rgb8.shape[:2]
    entries = len(imgs) + len(labels) + (1 if f > 1 else 0)
    width, height, top, left = _overlay_layout(h, w, title=bool(title), entries=entries)
    with new_figure(width / DPI, height / DPI, DPI) as fig:
        fig.figimage(rgb8, xo=left, yo=height - top - h, origin="upper", resize=False)
        if title:
            fig.text(left / width, 1 - (_PAD + 4) / height, title, ha="left", va="top", fontsize=12, fontweight="bold")

        if pixel_size_um and pixel_size_um > 0:
            px_um = float(pixel_size_um) * f
            length = _nice_length(0.2 * w * px_um)
            bar_px = length / px_um
            if bar_px >= 4:
                thick = max(3, round(h / 120))
                margin = max(8, round(0.04 * w))
                x1 = left + w - margin
                x0 = x1 - bar_px
                y0 = height - top - h + margin  # from the figure's bottom
                fig.add_artist(
                    Rectangle(
                        (x0 / width, y0 / height),
                        bar_px / width,
                        thick / height,
                        transform=fig.transFigure,
                        facecolor="white",
                        edgecolor="black",
                        linewidth=0.8,
                    )
                )
                fig.text(
                    (x0 + x1) / 2 / width,
                    (y0 + thick + 3) / height,
                    _length_label(length),
                    ha="center",
                    va="bottom",
                    fontsize=10,
                    color="white",
                    fontweight="bold",
                    path_effects=[withStroke(linewidth=2.5, foreground="black")],
                )

        handles = []
        for name, color in chan_colors.items():
            handles.append(Patch(facecolor=color, edgecolor="#444444", linewidth=0.5, label=name))
        for name in labels:
            n = counts[name]
            handles.append(
                Line2D([], [], color=out_colors[name], linewidth=3, label=f"{name} ({n} object{'s' if n != 1 else ''})")
            )
        if f > 1:
            handles.append(Patch(facecolor="none", edgecolor="none", label=f"shown at 1/{f} scale"))
        leg = fig.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=((left + w + 12) / width, 1 - top / height),
            frameon=False,
            fontsize=10,
            handlelength=1.6,
            borderaxespad=0.0,
            borderpad=0.0,
            labelspacing=0.6,
        )
        leg.set_in_layout(False)
        return to_png(fig)


def contact_sheet(tiles: Sequence[tuple[str, bytes]], columns: int = 4, *, tile_px: int = 480) -> bytes:
    """One PNG with several PNGs (``(caption, png)`` pairs) on a grid, each under its caption.

    A tile larger than a ``tile_px`` square is shrunk to fit it (aspect kept); smaller tiles
    keep their size. Tiles sit top-centred in their grid cell.
    """
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    columns = max(1, min(int(columns), len(tiles)))
    images = [read_png(png) for _, png in tiles]
    sizes = []
    for im in images:
        h, w = im.shape[:2]
        s = min(1.0, tile_px / w, tile_px / h)
        sizes.append((max(1, round(w * s)), max(1, round(h * s))))
    n_rows = math.ceil(len(tiles) / columns)
    col_w = [max(sizes[i][0] for i in range(c, len(tiles), columns)) for c in range(columns)]
    row_h = [max(sz[1] for sz in sizes[r * columns : (r + 1) * columns]) for r in range(n_rows)]
    cap, gap = 26, 12
    width = sum(col_w) + (columns + 1) * gap
    height = sum(row_h) + n_rows * cap + (n_rows + 1) * gap
    with new_figure(width / DPI, height / DPI, DPI) as fig:
        for i, ((caption, _), im, (w, h)) in enumerate(zip(tiles, images, sizes)):
            r, c = divmod(i, columns)
            x0 = gap + sum(col_w[:c]) + c * gap + (col_w[c] - w) / 2
            y_top = gap + sum(row_h[:r]) + r * (cap + gap)
            ax = fig.add_axes((x0 / width, 1 - (y_top + cap + h) / height, w / width, h / height))
            ax.imshow(im, interpolation="antialiased", aspect="auto")
            ax.set_axis_off()
            fig.text((x0 + w / 2) / width, 1 - (y_top + 3) / height, caption, ha="center", va="top", fontsize=10)
        return to_png(fig)
