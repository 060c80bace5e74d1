"""Synthetic microscopy fields of cultured cells, with ground-truth labels.

:func:`synth_field` renders one field of view of an adherent cell culture as a
high-content screen images it: a nuclear stain (DAPI/Hoechst), one or more
cytoplasmic fluorescent channels and label-free brightfield, together with the
nucleus and whole-cell instance labels the image was drawn from.

The model, in order:

1. **Placement.** Cells sit partly in clusters (a Thomas process) and partly
   alone; a nucleus never lies closer to another than about the sum of their
   radii, so nuclei touch but do not pile up. Centres are drawn anywhere in the
   field (and a little beyond), so cells near the edges are cut by it.
2. **Shapes.** Each nucleus is an ellipse with a few low harmonics on its
   outline; each cell a larger, more irregular outline around its nucleus
   (off-centre, with protrusions). Pixels go to the object whose outline they
   lie deepest inside (an additively weighted Voronoi partition limited by each
   cell's own outline, nuclei taking precedence over cytoplasm), so neighbouring
   cells tile against each other along straight-ish contact lines.
3. **Rendering.** DNA: a dome-shaped profile per nucleus with chromatin-like
   texture and darker nucleoli; intensity follows a cell-cycle DNA content.
   Cytoplasm: bright, thinning towards the cell edge, dim in the nucleus;
   ``dose`` moves signal into the nucleus and lowers it overall (a sigmoid per
   cell), and removes cells (toxicity). Brightfield: mid-grey, cells seen
   through their thickness as a defocus/phase halo (difference of Gaussians:
   bright rim outside, dark rim inside), granular cytoplasm, faint nuclei.
   Rounded mitotic cells are small, bright and high-contrast.
4. **Optics and camera.** Point-spread blur, a smooth vignetting/gradient of
   amplitude ``illumination`` on every channel, rare bright debris (the only
   pixels that may saturate), Poisson shot noise (drawn in its normal
   approximation: variance equal to the signal, exact enough at the signal
   levels involved and four times faster) plus Gaussian read noise, a camera
   offset of ~100 counts (uint16), rounding and clipping to the dtype.

Everything is vectorised; the only Python loops run over cells and touch a
small crop each. The geometry and textures depend on ``seed`` alone, so the
same seed gives the same cells whatever channels are asked for, and the time
(``frame``) and focus (``defocus``) arguments move and blur the same cells.
"""

from __future__ import annotations

import functools
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import DTypeLike
from scipy import ndimage as ndi

__all__ = ["SynthField", "channel_kind", "dose_effect", "synth_field"]

ChannelKind = Literal["nuclear", "cytoplasm", "brightfield"]

_NUCLEAR_RE = re.compile(r"^\s*(dapi|hoechst)", re.IGNORECASE)
_BRIGHTFIELD_RE = re.compile(r"^\s*(brightfield|bright[\s_-]?field|bf(?![a-z])|mono|dic|phase|tl\b)", re.IGNORECASE)

_NB = 128  # angular bins of the outline tables
_NUC_PRIORITY = 1.0e4  # score offset that lets nuclei win over any cytoplasm
_CAMERA_OFFSET = 100.0  # counts, uint16 scale
_READ_NOISE = 2.2  # counts rms, uint16 scale


def channel_kind(name: str) -> ChannelKind:
    """What a channel shows, judged from its name.

    ``DAPI``/``Hoechst``... are nuclear; ``Brightfield``/``BF``/``Mono``/``DIC``/
    ``Phase``... are transmitted light; everything else (``GFP``, ``FITC``,
    ``Cyto``, ``Actin``, ``TRITC``, unknown names) is a cytoplasmic stain.

    >>> channel_kind("Hoechst 33342"), channel_kind("BF"), channel_kind("BFP")
    ('nuclear', 'brightfield', 'cytoplasm')
    """
    if _NUCLEAR_RE.match(name):
        return "nuclear"
    if _BRIGHTFIELD_RE.match(name):
        return "brightfield"
    return "cytoplasm"


def dose_effect(dose: float) -> float:
    """Population-mean response (0..1) to a normalised ``dose`` (0..1): a sigmoid centred on 0.5.

    Rescaled so that ``dose_effect(0) == 0`` and ``dose_effect(1) == 1``.
    """

    def s(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-(x - 0.5) / 0.12))

    d = min(max(float(dose), 0.0), 1.0)
    return (s(d) - s(0.0)) / (s(1.0) - s(0.0))


@dataclass(frozen=True, eq=False)
class SynthField:
    """One synthetic field of view and its ground truth.

    Attributes
    ----------
    image : numpy.ndarray
        ``(C, Y, X)`` pixel data in the requested dtype, channels in the order asked for.
    nuclei : numpy.ndarray
        ``(Y, X)`` int32 nucleus instance labels, 0 = background, ids 1..N.
    cells : numpy.ndarray
        ``(Y, X)`` int32 whole-cell instance labels; a cell has the id of its
        nucleus and contains all of it.
    channels : tuple of str
        Channel names, one per image plane.
    dose : float
        The normalised dose the field was rendered at.
    kinds : tuple of str
        What each channel shows: ``"nuclear"``, ``"cytoplasm"`` or ``"brightfield"``.
    """

    image: np.ndarray
    nuclei: np.ndarray
    cells: np.ndarray
    channels: tuple[str, ...] = ()
    dose: float = 0.0
    kinds: tuple[str, ...] = field(default=())

    @property
    def n_cells(self) -> int:
        """Number of labelled cells (= nuclei) in the field."""
        return int(self.cells.max(initial=0))


# --------------------------------------------------------------------------- geometry


@dataclass
class _Population:
    """Per-cell parameters; arrays of length N (index i is cell id i + 1 before compaction)."""

    cy: np.ndarray
    cx: np.ndarray
    nuc_tab: np.ndarray  # (N, NB) nucleus outline radius per angle bin, px
    cell_tab: np.ndarray  # (N, NB) cell outline radius per angle bin, px
    reach: np.ndarray  # (N,) max cell radius, px
    dna: np.ndarray  # DAPI level, counts
    chromatin: np.ndarray  # chromatin texture amplitude
    height: np.ndarray  # relative cell thickness (brightfield contrast, cytoplasm brightness)
    mitotic: np.ndarray  # bool
    sensitivity: np.ndarray  # dose at which the cell responds (0..1)
    vy: np.ndarray  # drift, px per frame
    vx: np.ndarray
    wobble: np.ndarray  # (N, 3): amplitude px, phase y, phase x


def _outline(
    rng: np.random.Generator,
    radius: np.ndarray,
    aspect: np.ndarray,
    harmonics: Sequence[tuple[int, float]],
    orientation: np.ndarray | None = None,
) -> np.ndarray:
    """Radius tables ``(N, NB)`` of perturbed ellipses with mean radius ``radius`` and axis ratio ``aspect``."""
    n = len(radius)
    theta = (np.arange(_NB) + 0.5) * (2 * np.pi / _NB) - np.pi
    phi = rng.uniform(0, np.pi, n) if orientation is None else orientation
    a = radius * np.sqrt(aspect)
    b = radius / np.sqrt(aspect)
    t = theta[None, :] - phi[:, None]
    r = (a * b)[:, None] / np.sqrt((b[:, None] * np.cos(t)) ** 2 + (a[:, None] * np.sin(t)) ** 2)
    wave = np.ones((n, _NB))
    for k, amp in harmonics:
        wave += rng.normal(0.0, amp, (n, 1)) * np.cos(k * theta[None, :] + rng.uniform(0, 2 * np.pi, (n, 1)))
    return r * np.clip(wave, 0.6, None)


def _place(
    rng: np.random.Generator,
    shape: tuple[int, int],
    spacing: np.ndarray,
    cluster_sigma: float,
    margin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres for cells with exclusion radii ``spacing``; returns (cy, cx, index of placed cells).

    Centres fall up to ``margin`` px outside the field, so objects are cut by its edges.
    """
    h, w = shape
    n = len(spacing)
    n_clusters = max(1, int(round(n / 7)))
    ccy = rng.uniform(0, h, n_clusters)
    ccx = rng.uniform(0, w, n_clusters)
    member = rng.integers(0, n_clusters, n)
    clustered = rng.random(n) < 0.75
    tries = 24
    # proposals: clustered cells first try around their cluster centre, then anywhere
    py = rng.uniform(-margin, h + margin, (n, tries))
    px = rng.uniform(-margin, w + margin, (n, tries))
    half = tries // 2
    gy = ccy[member][:, None] + rng.normal(0, cluster_sigma, (n, half))
    gx = ccx[member][:, None] + rng.normal(0, cluster_sigma, (n, half))
    py[clustered, :half] = gy[clustered]
    px[clustered, :half] = gx[clustered]

    cell = float(2 * spacing.max()) if n else 1.0
    grid: dict[tuple[int, int], list[int]] = {}
    out_y: list[float] = []
    out_x: list[float] = []
    out_r: list[float] = []
    kept: list[int] = []
    for i in range(n):
        ri = float(spacing[i])
        for j in range(tries):
            y = float(py[i, j])
            x = float(px[i, j])
            if not (-margin <= y < h + margin and -margin <= x < w + margin):
                continue
            gi, gj = int((y + margin) // cell), int((x + margin) // cell)
            ok = True
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    for k in grid.get((gi + di, gj + dj), ()):
                        dmin = ri + out_r[k]
                        if (out_y[k] - y) ** 2 + (out_x[k] - x) ** 2 < dmin * dmin:
                            ok = False
                            break
                    if not ok:
                        break
                if not ok:
                    break
            if ok:
                grid.setdefault((gi, gj), []).append(len(out_y))
                out_y.append(y)
                out_x.append(x)
                out_r.append(ri)
                kept.append(i)
                break
    return np.asarray(out_y), np.asarray(out_x), np.asarray(kept, dtype=np.intp)


def _population(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n_cells: int | None,
    nucleus_radius_px: float,
    cell_radius_px: float,
    dose: float,
    density: float,
) -> _Population:
    effect = dose_effect(dose)
    h, w = shape
    if n_cells is None:
        expected = density * h * w / (math.pi * cell_radius_px**2) * (1.0 - 0.2 * effect)
        n = int(rng.poisson(max(expected, 0.0)))
    else:
        n = int(n_cells)
    n = max(n, 0)

    mitotic = rng.random(n) < 0.03
    # apoptotic/pyknotic cells appear with dose: small bright nuclei, shrunken cells
    pyknotic = (~mitotic) & (rng.random(n) < 0.25 * effect)
    u = rng.random(n)
    content = np.where(u < 0.55, 1.0, np.where(u < 0.85, rng.uniform(1.0, 2.0, n), 2.0))  # G1 / S / G2
    r_n = nucleus_radius_px * content**0.25 * rng.lognormal(0.0, 0.08, n)
    r_n = np.where(mitotic, r_n * 0.8, r_n)
    r_n = np.where(pyknotic, r_n * 0.6, r_n)
    nuc_aspect = np.where(mitotic, rng.uniform(1.5, 2.4, n), rng.uniform(1.0, 1.55, n))
    nuc_tab = _outline(rng, r_n, nuc_aspect, [(2, 0.03), (3, 0.03), (4, 0.015), (5, 0.01)])

    r_c = cell_radius_px * rng.lognormal(0.0, 0.18, n) * (1.0 - 0.15 * effect)
    r_c = np.where(mitotic, np.maximum(r_n * 1.55, 0.55 * cell_radius_px), r_c)
    r_c = np.where(pyknotic, r_c * 0.7, r_c)
    cell_aspect = np.where(mitotic, rng.uniform(1.0, 1.1, n), rng.uniform(1.0, 2.2, n))
    harm = [(1, 0.16), (2, 0.08), (3, 0.09), (4, 0.06), (5, 0.05), (6, 0.04), (8, 0.025)]
    cell_tab = _outline(rng, r_c, cell_aspect, harm)
    cell_tab[mitotic] = _outline(rng, r_c[mitotic], cell_aspect[mitotic], [(3, 0.02)])
    cell_tab = np.maximum(cell_tab, 1.3 * nuc_tab + 2.0)

    # keep nuclei about their own radius apart: touching happens, overlap does not
    # (two cells stay spacing_i + spacing_j apart; elongated nuclei can still meet end to end)
    spacing = 1.02 * r_n
    cy, cx, kept = _place(rng, shape, spacing, cluster_sigma=1.3 * cell_radius_px, margin=0.4 * nucleus_radius_px)

    dna = 2600.0 * np.sqrt(content) * rng.lognormal(0.0, 0.12, n)
    dna = np.where(mitotic, dna * 2.3, dna)
    dna = np.where(pyknotic, dna * 2.0, dna)
    chromatin = np.where(mitotic | pyknotic, 0.08, rng.uniform(0.18, 0.38, n))
    height = np.where(mitotic, 1.6, rng.uniform(0.8, 1.2, n))
    height = np.where(pyknotic, 1.4, height)
    sensitivity = np.clip(rng.normal(0.5, 0.12, n), 0.05, 0.95)
    speed = rng.uniform(0.2, 1.2, n)
    heading = rng.uniform(0, 2 * np.pi, n)
    wobble = np.stack([rng.uniform(0.3, 1.5, n), rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 2 * np.pi, n)], 1)

    k = kept
    return _Population(
        cy=cy,
        cx=cx,
        nuc_tab=nuc_tab[k].astype(np.float32),
        cell_tab=cell_tab[k].astype(np.float32),
        reach=cell_tab[k].max(axis=1) if len(k) else np.zeros(0),
        dna=dna[k],
        chromatin=chromatin[k],
        height=height[k],
        mitotic=mitotic[k],
        sensitivity=sensitivity[k],
        vy=(speed * np.sin(heading))[k],
        vx=(speed * np.cos(heading))[k],
        wobble=wobble[k],
    )


@dataclass
class _Raster:
    """The partition of the field among cells, before ids are compacted."""

    owner: np.ndarray  # (Y, X) int32, population index + 1, 0 = background
    in_nucleus: np.ndarray  # (Y, X) bool
    cy: np.ndarray  # (N,) integer cell centres at this frame
    cx: np.ndarray
    dy: np.ndarray  # (N,) integer displacement of each cell at this frame
    dx: np.ndarray
    polar_radius: int  # half-size of the polar look-up tables below
    rho: np.ndarray  # (2R+1, 2R+1) distance from the centre
    bins: np.ndarray  # (2R+1, 2R+1) angle bin


@functools.lru_cache(maxsize=8)
def _polar(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Distance and angle bin of every integer offset in a (2R+1)² square around a centre pixel."""
    d = np.arange(-radius, radius + 1, dtype=np.float32)
    dy, dx = d[:, None], d[None, :]
    rho = np.sqrt(dy * dy + dx * dx)
    bins = ((np.arctan2(dy, dx) + np.float32(np.pi)) * np.float32(_NB / (2 * np.pi))).astype(np.intp)
    np.minimum(bins, _NB - 1, out=bins)
    rho.flags.writeable = False
    bins.flags.writeable = False
    return rho, bins


def _rasterize(pop: _Population, shape: tuple[int, int], frame: int) -> _Raster:
    """Share the pixels out among cells: each goes to the outline it lies deepest inside.

    Centres are snapped to whole pixels so that every cell reads its distances
    and angles from one shared look-up table instead of computing them.
    """
    h, w = shape
    score = np.zeros(shape, np.float32)  # only scores < 0 (inside an outline) claim a pixel
    owner = np.zeros(shape, np.int32)
    n = len(pop.cy)
    if frame:
        amp, py_, px_ = pop.wobble[:, 0], pop.wobble[:, 1], pop.wobble[:, 2]
        dyf = pop.vy * frame + amp * (np.sin(0.9 * frame + py_) - np.sin(py_))
        dxf = pop.vx * frame + amp * (np.sin(0.9 * frame + px_) - np.sin(px_))
    else:
        dyf = np.zeros(n)
        dxf = np.zeros(n)
    cy = np.rint(pop.cy + dyf).astype(np.intp)
    cx = np.rint(pop.cx + dxf).astype(np.intp)
    big = int(math.ceil(pop.reach.max())) + 2 if n else 1
    big = 1 << max(big - 1, 1).bit_length()  # few distinct table sizes, for the cache
    rho_t, bin_t = _polar(big)
    prio = np.float32(_NUC_PRIORITY)
    for i in range(n):
        reach = int(math.ceil(pop.reach[i])) + 1
        iy, ix = int(cy[i]), int(cx[i])
        y0, y1 = max(iy - reach, 0), min(iy + reach + 1, h)
        x0, x1 = max(ix - reach, 0), min(ix + reach + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        ly, lx = slice(y0 - iy + big, y1 - iy + big), slice(x0 - ix + big, x1 - ix + big)
        rho = rho_t[ly, lx]
        b = bin_t[ly, lx]
        d_nuc = rho - pop.nuc_tab[i][b]
        s = rho - pop.cell_tab[i][b]
        np.copyto(s, d_nuc - prio, where=d_nuc < 0)
        sub = score[y0:y1, x0:x1]
        win = s < sub
        np.copyto(sub, s, where=win)
        np.copyto(owner[y0:y1, x0:x1], np.int32(i + 1), where=win)
    in_nucleus = score < -0.5 * prio
    _merge_fragments(owner, in_nucleus)
    return _Raster(
        owner=owner,
        in_nucleus=in_nucleus,
        cy=cy,
        cx=cx,
        dy=np.rint(dyf).astype(np.intp),
        dx=np.rint(dxf).astype(np.intp),
        polar_radius=big,
        rho=rho_t,
        bins=bin_t,
    )


def _merge_fragments(owner: np.ndarray, in_nucleus: np.ndarray) -> None:
    """Make every cell one 4-connected piece, in place.

    Competing outlines leave a few slivers (mostly single pixels on jagged
    contacts) cut off from their cell. Each goes to the neighbour it touches
    most, or to the background when it touches no other cell.
    """
    h, w = owner.shape
    cross = ndi.generate_binary_structure(2, 1)
    for i, sl in enumerate(ndi.find_objects(owner)):
        if sl is None:
            continue
        lab, k = ndi.label(owner[sl] == i + 1, cross)
        if k <= 1:
            continue
        sizes = np.bincount(lab.ravel(), minlength=k + 1)
        nuc = np.bincount(lab[in_nucleus[sl]], minlength=k + 1)
        keep = max(range(1, k + 1), key=lambda j: (nuc[j], sizes[j]))
        y0, y1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, h)
        x0, x1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, w)
        big = np.zeros((y1 - y0, x1 - x0), lab.dtype)
        big[sl[0].start - y0 : sl[0].stop - y0, sl[1].start - x0 : sl[1].stop - x0] = lab
        region = owner[y0:y1, x0:x1]
        for j in range(1, k + 1):
            if j == keep:
                continue
            frag = big == j
            ring = ndi.binary_dilation(frag, cross) & ~frag
            nb = region[ring]
            nb = nb[(nb > 0) & (nb != i + 1)]
            region[frag] = np.bincount(nb).argmax() if nb.size else 0
            in_nucleus[y0:y1, x0:x1][frag] = False


def _compact(raster: _Raster, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels 1..M (population order) for the cells whose nucleus is in view."""
    present = np.zeros(n + 1, bool)
    present[raster.owner[raster.in_nucleus]] = True
    present[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    cells = lut[raster.owner]
    nuclei = cells * raster.in_nucleus
    return nuclei, cells


# --------------------------------------------------------------------------- rendering


def _gauss_kernel(sigma: float, truncate: float = 3.0) -> tuple[np.ndarray, int]:
    r = max(int(math.ceil(truncate * sigma)), 1)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32), r


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float32 image (reflecting edges, 3 sigma support), as a new array.

    Along rows scipy's 1-D correlation is fast; along columns it strides through
    memory, so that pass is a sum of shifted, contiguous row blocks instead.
    """
    if sigma <= 0.05:
        return img.copy()
    k, r = _gauss_kernel(sigma)
    h = img.shape[0]
    if r >= h:
        return ndi.gaussian_filter(img, sigma, mode="reflect", truncate=3.0)
    tmp = ndi.correlate1d(img, k, axis=1, mode="reflect")
    pad = np.concatenate([tmp[r - 1 :: -1], tmp, tmp[: h - r - 1 : -1]], axis=0)
    out = pad[r : r + h] * k[r]
    buf = np.empty_like(out)
    for j in range(r):
        np.add(pad[j : j + h], pad[2 * r - j : 2 * r - j + h], out=buf)
        buf *= k[j]
        out += buf
    return out


def _fine_texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Unit-variance Gaussian noise correlated over ~1-2 px (chromatin, granules)."""
    sigma = 1.0
    t = _blur(rng.standard_normal(shape, dtype=np.float32), sigma)
    k, _ = _gauss_kernel(sigma)
    t *= np.float32(1.0 / float((k.astype(np.float64) ** 2).sum()))  # 1 / std of separably blurred white noise
    return t.ravel()


def _coarse_sample(grid: np.ndarray, y: np.ndarray, x: np.ndarray, step: int) -> np.ndarray:
    """Bilinear samples of a coarse grid (one node every ``step`` px) at pixel coordinates."""
    gy = y.astype(np.float32) / step
    gx = x.astype(np.float32) / step
    y0 = np.minimum(gy.astype(np.intp), grid.shape[0] - 2)
    x0 = np.minimum(gx.astype(np.intp), grid.shape[1] - 2)
    fy = gy - y0
    fx = gx - x0
    g00 = grid[y0, x0]
    g01 = grid[y0, x0 + 1]
    g10 = grid[y0 + 1, x0]
    g11 = grid[y0 + 1, x0 + 1]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy


def _illumination(rng: np.random.Generator, shape: tuple[int, int], amplitude: float) -> np.ndarray:
    """Smooth vignetting with an off-centre optical axis and a slight tilt, max 1 (float32, Y×X)."""
    h, w = shape
    side = max(h, w)
    cy = h / 2 + rng.uniform(-0.15, 0.15) * h
    cx = w / 2 + rng.uniform(-0.15, 0.15) * w
    ay = ((np.arange(h, dtype=np.float32) - cy) / (0.5 * side))[:, None]
    ax = ((np.arange(w, dtype=np.float32) - cx) / (0.5 * side))[None, :]
    tilt = rng.uniform(-0.25, 0.25, 2).astype(np.float32)
    v = 1.0 - np.float32(amplitude) * (0.5 * (ay * ay + ax * ax) + tilt[0] * ay + tilt[1] * ax)
    v = v.astype(np.float32)
    v /= v.max()
    return v


@dataclass
class _Scene:
    """A field before optics and camera: clean signal per channel (counts above offset, uint16 scale)."""

    names: tuple[str, ...]
    kinds: tuple[ChannelKind, ...]
    signal: list[np.ndarray]  # in-focus signal (Y, X) float32 per channel, before vignetting
    halo: list[np.ndarray | None]  # brightfield: the phase halo term, scaled by defocus
    background: list[float]
    nuclei: np.ndarray
    cells: np.ndarray
    vignetting: np.ndarray
    dose: float
    frame: int


def _seed_words(seed: int) -> list[int]:
    """A seed of any size or sign as two 32-bit words (SeedSequence takes non-negative entropy)."""
    s = int(seed) % 2**64
    return [s & 0xFFFFFFFF, s >> 32]


def _channel_seed(seed: int, name: str, salt: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([*_seed_words(seed), zlib.crc32(name.encode()), salt])


def _scene(
    *,
    shape: tuple[int, int],
    seed: int,
    channels: Sequence[str],
    n_cells: int | None,
    nucleus_radius_px: float,
    cell_radius_px: float,
    dose: float,
    illumination: float,
    density: float,
    frame: int = 0,
) -> _Scene:
    shape = (int(shape[0]), int(shape[1]))
    h, w = shape
    names = tuple(str(c) for c in channels)
    kinds = tuple(channel_kind(c) for c in names)
    ss = np.random.SeedSequence([*_seed_words(seed), 0x5EED])
    g_geom, g_tex, g_light, g_debris = (np.random.default_rng(s) for s in ss.spawn(4))

    pop = _population(g_geom, shape, n_cells, nucleus_radius_px, cell_radius_px, dose, density)
    n = len(pop.cy)
    raster = _rasterize(pop, shape, frame)
    nuclei, cells = _compact(raster, n)
    bleach = 0.985**frame

    # pixel subsets, with texture coordinates that travel with their cell
    size = h * w
    cell_px = np.flatnonzero(raster.owner.ravel())
    own = raster.owner.ravel()[cell_px] - 1
    in_nuc = raster.in_nucleus.ravel()[cell_px]
    py, px = np.divmod(cell_px, w)
    big = raster.polar_radius
    oy = np.clip(py - raster.cy[own] + big, 0, 2 * big)
    ox = np.clip(px - raster.cx[own] + big, 0, 2 * big)
    rho = raster.rho[oy, ox]
    bins = raster.bins[oy, ox]
    rn = rho / pop.nuc_tab[own, bins]  # < 1 inside the own nucleus
    rc = rho / pop.cell_tab[own, bins]  # < 1 inside the own outline
    del oy, ox, rho, bins
    dome_n = np.sqrt(np.clip(1.0 - rn * rn, 0.0, 1.0))
    dome_c = np.sqrt(np.clip(1.0 - rc * rc, 0.0, 1.0))
    ty = (py - raster.dy[own]) % h
    tx = (px - raster.dx[own]) % w
    tex_idx = ty * w + tx
    tex = _fine_texture(g_tex, shape)
    # nucleoli: peaks of a coarse random field, sampled on nuclear pixels only
    step = 4
    coarse = ndi.gaussian_filter(g_tex.standard_normal((h // step + 3, w // step + 3)).astype(np.float32), 0.8)
    coarse /= coarse.std() + 1e-6
    nuc_sel = np.flatnonzero(in_nuc)
    nucleoli = np.clip(_coarse_sample(coarse, ty[nuc_sel], tx[nuc_sel], step) - 1.2, 0.0, None)
    o_nuc = own[nuc_sel]

    vignetting = _illumination(g_light, shape, illumination)

    # rare debris: a speck every couple of fields, bright in fluorescence, dark in brightfield
    n_debris = int(g_debris.poisson(0.6 * size / 512**2))
    deb_y = g_debris.uniform(0, h, n_debris)
    deb_x = g_debris.uniform(0, w, n_debris)
    deb_r = g_debris.uniform(1.2, 3.5, n_debris)
    deb_i = g_debris.lognormal(np.log(9000.0), 1.0, n_debris)

    def add_debris(img: np.ndarray, gain: float, mode: str = "add") -> None:
        for y, x, r, a in zip(deb_y, deb_x, deb_r, deb_i, strict=True):
            rr = int(math.ceil(3 * r))
            y0, y1 = max(int(y) - rr, 0), min(int(y) + rr + 1, h)
            x0, x1 = max(int(x) - rr, 0), min(int(x) + rr + 1, w)
            gy = (np.arange(y0, y1, dtype=np.float32) - np.float32(y))[:, None]
            gx = (np.arange(x0, x1, dtype=np.float32) - np.float32(x))[None, :]
            spot = np.exp(-(gy * gy + gx * gx) / np.float32(0.5 * r * r))
            if mode == "add":
                img[y0:y1, x0:x1] += np.float32(a * gain) * spot
            else:  # absorb
                img[y0:y1, x0:x1] *= 1.0 - np.float32(min(a / 9000.0, 1.0) * gain) * spot

    signal: list[np.ndarray] = []
    halo: list[np.ndarray | None] = []
    background: list[float] = []
    for name, kind in zip(names, kinds, strict=True):
        g = np.random.default_rng(_channel_seed(seed, name, 1))
        flat = np.zeros(size, np.float32)
        # each channel reads the shared texture at its own offset (from its name), so textures differ
        t = tex[(tex_idx + zlib.crc32(name.encode()) % size) % size]
        if kind == "nuclear":
            level = (pop.dna * g.lognormal(0.0, 0.05, n)).astype(np.float32)
            chrom = pop.chromatin.astype(np.float32)
            val = level[o_nuc] * (0.45 + 0.55 * dome_n[nuc_sel]) * (1.0 + chrom[o_nuc] * t[nuc_sel])
            val *= np.clip(1.0 - 0.45 * nucleoli, 0.4, 1.0)
            flat[cell_px[nuc_sel]] = np.maximum(val, 0.0) * np.float32(bleach)
            img = _blur(flat.reshape(shape), 1.0)
            add_debris(img, 1.0)
            bg = 140.0
            hal = None
        elif kind == "cytoplasm":
            base = 1500.0 * g.lognormal(0.0, 0.35, n) * pop.height * np.where(pop.mitotic, 1.4, 1.0)
            # per-cell sigmoid response around the cell's own sensitivity, 0 at dose 0
            resp = 1.0 / (1.0 + np.exp(-(dose - pop.sensitivity) / 0.07))
            resp0 = 1.0 / (1.0 + np.exp(pop.sensitivity / 0.07))
            resp = np.clip((resp - resp0) / (1.0 - resp0), 0.0, 1.0)
            cyto_f = (base * (1.0 - 0.7 * resp)).astype(np.float32)
            nuc_f = (base * (0.28 + 0.5 * resp)).astype(np.float32)
            nuc_f = np.where(pop.mitotic, cyto_f * 0.9, nuc_f)  # no nuclear envelope in mitosis
            profile = 0.3 + 0.7 * dome_c**0.6
            val = np.where(
                in_nuc,
                nuc_f[own] * (1.0 + 0.1 * t),
                cyto_f[own] * profile * (1.0 + 0.22 * t),
            )
            flat[cell_px] = np.maximum(val, 0.0) * np.float32(bleach)
            img = _blur(flat.reshape(shape), 1.2)
            add_debris(img, 0.6)
            bg = 230.0
            hal = None
        else:  # brightfield: transmitted light, cells seen through their thickness
            level = np.float32(11500.0 * (1.0 + 0.01 * math.sin(1.3 * frame)))
            h_cell = pop.height.astype(np.float32)[own]
            thick = np.zeros(size, np.float32)
            thick[cell_px] = h_cell * (0.55 + 0.45 * dome_c) + 0.15 * h_cell * dome_n * in_nuc
            th = thick.reshape(shape)
            # cell-cell contacts are thinner: pixels whose right/lower neighbour is another cell
            ow = raster.owner
            cut = np.zeros(shape, bool)
            cut[:, :-1] |= (ow[:, :-1] != ow[:, 1:]) & (ow[:, 1:] > 0) & (ow[:, :-1] > 0)
            cut[:-1, :] |= (ow[:-1, :] != ow[1:, :]) & (ow[1:, :] > 0) & (ow[:-1, :] > 0)
            th[cut] *= 0.6
            dog = _blur(th, 1.0)
            dog -= _blur(th, 3.5)
            gran = np.zeros(size, np.float32)
            gran[cell_px] = -0.018 * t * (1.0 - 0.5 * in_nuc)
            gran[cell_px[nuc_sel]] -= 0.035 * nucleoli
            # rounded (mitotic) cells act as lenses: bright centre inside the dark rim
            lens = pop.mitotic[own]
            gran[cell_px[lens]] += 0.2 * dome_c[lens] ** 2
            img = level * (1.0 + gran.reshape(shape))
            add_debris(img, 0.7, "absorb")
            bg = 0.0
            hal = np.float32(-0.3) * level * dog
        signal.append(img)
        halo.append(hal)
        background.append(bg)
    return _Scene(
        names=names,
        kinds=kinds,
        signal=signal,
        halo=halo,
        background=background,
        nuclei=nuclei,
        cells=cells,
        vignetting=vignetting,
        dose=float(dose),
        frame=frame,
    )


def _expose(
    scene: _Scene,
    *,
    noise_seed: int,
    noise: float,
    dtype: DTypeLike,
    defocus: float = 0.0,
) -> np.ndarray:
    """Optics and camera: defocus, vignetting, background, shot + read noise, offset, quantisation."""
    dt = np.dtype(dtype)
    h, w = scene.nuclei.shape
    out = np.empty((len(scene.names), h, w), dt)
    if dt.kind in "ui":
        scale = 1.0 / 48.0 if dt.itemsize == 1 else 1.0  # 8-bit cameras: same look, fewer levels
        top = float(np.iinfo(dt).max)
    else:
        scale, top = 1.0, math.inf
    blur_sigma = 2.2 * abs(defocus)
    for c, name in enumerate(scene.names):
        sig = scene.signal[c]
        if scene.halo[c] is not None:
            sig = sig + scene.halo[c] * np.float32(1.0 + 0.9 * defocus)
        sig = _blur(sig, blur_sigma) if blur_sigma else sig
        img = (sig + np.float32(scene.background[c])) * scene.vignetting
        if noise > 0:
            g = np.random.default_rng(_channel_seed(noise_seed, name, 2))
            # shot noise (variance = signal, normal approximation) and read noise in one draw
            sd = np.sqrt(np.maximum(img, 0.0) + np.float32(_READ_NOISE**2))
            img += np.float32(noise) * sd * g.standard_normal(img.shape, dtype=np.float32)
        img += np.float32(_CAMERA_OFFSET)
        if scale != 1.0:
            img *= np.float32(scale)
        if dt.kind in "ui":
            np.rint(img, out=img)
            np.clip(img, 0.0, top, out=img)
        out[c] = img
    return out


def synth_field(
    *,
    shape: tuple[int, int] = (512, 512),
    seed: int,
    channels: Sequence[str] = ("DAPI", "GFP", "Brightfield"),
    n_cells: int | None = None,
    nucleus_radius_px: float = 9.0,
    cell_radius_px: float = 22.0,
    dose: float = 0.0,
    dtype: DTypeLike = "uint16",
    illumination: float = 0.15,
    noise: float = 1.0,
    density: float = 0.5,
    frame: int = 0,
    defocus: float = 0.0,
    noise_seed: int | None = None,
) -> SynthField:
    """Render a synthetic field of cultured cells with its ground-truth labels.

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` size in pixels.
    seed : int
        Seed of everything random. The cells, their shapes and textures depend
        on it and on the geometry arguments (``shape``, ``n_cells``, radii,
        ``density``, ``dose``), not on ``channels``, ``frame`` or ``defocus``.
    channels : sequence of str
        Channel names; what each shows follows :func:`channel_kind` (nuclear,
        cytoplasm, brightfield). Any subset, in any order.
    n_cells : int, optional
        Number of cells to place (exactly, unless the field is too crowded to
        hold them). By default drawn from ``density`` and ``dose``.
    nucleus_radius_px, cell_radius_px : float
        Typical nucleus and cell radii in pixels (each cell varies around them).
    dose : float
        Normalised treatment strength 0..1. Cytoplasmic channels lose signal and
        move some of it into the nucleus following a per-cell sigmoid (mean
        response :func:`dose_effect`); cells shrink, some nuclei condense, and
        the default cell count drops by up to 20 %.
    dtype : numpy dtype
        ``uint16`` (camera offset ~100 counts), ``uint8`` (levels divided by 48),
        or a float type (counts, not rounded or clipped).
    illumination : float
        Amplitude of the smooth uneven illumination (vignetting and tilt).
    noise : float
        Scale of the camera noise: 1 realistic (shot noise with variance equal
        to the signal, plus read noise), 0 none.
    density : float
        Expected fraction of the field covered by cells when ``n_cells`` is None.
    frame : int
        Time point: cells drift by about a pixel per frame and fluorescence bleaches slightly.
    defocus : float
        Distance from focus in depths of field: blur grows with ``|defocus|``
        and the brightfield halo changes contrast with its sign.
    noise_seed : int, optional
        Seed of the camera noise; by default derived from ``seed``, ``frame``
        and ``defocus``.

    Returns
    -------
    SynthField
        The image ``(C, Y, X)`` and the ``nuclei``/``cells`` int32 labels.

    Examples
    --------
    >>> f = synth_field(shape=(128, 128), seed=1)
    >>> f.image.shape, f.image.dtype.name, f.nuclei.dtype.name
    ((3, 128, 128), 'uint16', 'int32')
    """
    scene = _scene(
        shape=shape,
        seed=seed,
        channels=channels,
        n_cells=n_cells,
        nucleus_radius_px=nucleus_radius_px,
        cell_radius_px=cell_radius_px,
        dose=dose,
        illumination=illumination,
        density=density,
        frame=frame,
    )
    if noise_seed is None:
        noise_seed = zlib.crc32(f"{seed}/{frame}/{defocus!r}".encode())
    image = _expose(scene, noise_seed=noise_seed, noise=noise, dtype=dtype, defocus=defocus)
    return SynthField(
        image=image,
        nuclei=scene.nuclei,
        cells=scene.cells,
        channels=scene.names,
        dose=float(dose),
        kinds=scene.kinds,
    )
