"""Per-object Haralick texture and granularity features with CellProfiler names and definitions.

Hand-written: cp-measure loops over objects (``mahotas.features.haralick`` on each object's
crop, dense ``levels x levels`` matrices); this is vectorized over a whole field and tested
against cp-measure 0.3 (``get_core_measurements()`` ``"texture"`` and ``"granularity"``), i.e.
CellProfiler's ``MeasureTexture`` and ``MeasureGranularity``.

Texture (:func:`texture_features`):

- The image is divided by ``scale_intensity`` (default: the dtype maximum, 1 for floats,
  as :func:`hts.compute.measure.features.intensity_features`) and quantized to uint8 as
  ``skimage.util.img_as_ubyte`` does (``rint(x * 255)``, in the image's float type), then
  for ``levels != 256`` mapped to ``trunc(q / 255 * (levels - 1))`` as cp-measure's
  ``rescale_intensity(..., in_range=(0, 255), out_range=(0, levels - 1)).astype(uint8)``.
  The mapping is fixed, not stretched to the image or object range. Unlike
  ``img_as_ubyte``, values outside 0..1 are clipped (not rejected) and non-finite pixels
  quantize to 0.
- Pixel pairs are (y, x) and (y + d dy, x + d dx) with d = ``scale`` and (dy, dx) =
  (0, 1), (1, 1), (1, 0), (1, -1) for directions 00..03 (CellProfiler / mahotas order:
  horizontal, diagonal NW-SE, vertical, diagonal NE-SW). A pair counts when both pixels
  belong to the same object and both quantized levels are > 0 (mahotas
  ``ignore_zeros=True`` on the object's crop with everything else zeroed); the
  co-occurrence matrix is symmetric (each pair counted as (a, b) and (b, a)).
- The 13 features are mahotas' (log2 entropies; Correlation is 1 where the marginal
  variance is 0; DifferenceVariance is the variance of the difference distribution
  ``P(|i - j| = k)`` over k = 0 .. the object's largest quantized level, as mahotas sizes its
  matrices by the object's maximum). Because the matrix is symmetric, both marginals are
  one distribution m: InfoMeas1 = (HXY - 2 HX) / HX (HXY - 2 HX where HX = 0) and
  InfoMeas2 = sqrt(max(0, 1 - exp(-2 (2 HX - HXY)))), which mahotas computes as sums over
  the dense outer product ``m m^T``: equal up to rounding.
- An object with no valid pair in some direction gets NaN for all its texture features
  (mahotas raises, cp-measure writes NaN).

Only the joint counts need the sparse (object, level, level) triples (one ``np.unique``
per direction over the pair codes, never a dense objects x levels x levels array); every
other feature is a bincount over the pairs or over dense objects x levels marginals.

Speed, measured once on a 1024x1024 field (the 512x512 DSB2018 nuclei image of the tests
tiled 2x2: 500 nuclei, 256 levels, scale 3) on a shared 2-core machine: this module
0.16 s, cp-measure 0.3's ``get_texture`` 5.6-7.6 s (35-50x). Granularity on the same
field: 0.9 s here, 0.7-0.8 s cp-measure; both are dominated by ``skimage`` reconstruction
(16 rounds on the 256x256 subsampled image), the per-object part is ~0.1 s.

Granularity (:func:`granularity_features`) follows cp-measure's ``get_granularity``
step by step (bilinear subsampling with ``map_coordinates``, background = opening of a
further subsampled image with a disk of ``element_size``, then ``spectrum_length``
rounds of erosion by a radius-1 disk and reconstruction); each round's reconstruction is
interpolated back at the object pixels only and averaged per object with one bincount.
Per-object granularity ``i`` is the drop of that mean in round ``i`` in percent of the
object's mean original intensity (at least machine epsilon).
"""

from __future__ import annotations

import numpy as np

from hts.compute.measure.features import _default_scale, _Objects

__all__ = ["texture_features", "granularity_features", "HARALICK_FEATURES", "TEXTURE_DIRECTIONS"]

HARALICK_FEATURES = (
    "AngularSecondMoment",
    "Contrast",
    "Correlation",
    "Variance",
    "InverseDifferenceMoment",
    "SumAverage",
    "SumVariance",
    "SumEntropy",
    "Entropy",
    "DifferenceVariance",
    "DifferenceEntropy",
    "InfoMeas1",
    "InfoMeas2",
)

# (dy, dx) per direction index 00..03, as mahotas' _2d_deltas / CellProfiler
TEXTURE_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1))


# --------------------------------------------------------------------------- texture
def texture_features(
    labels: np.ndarray,
    image: np.ndarray,
    *,
    channel: str,
    scale: int = 3,
    levels: int = 256,
    scale_intensity: float | None = None,
) -> dict[str, np.ndarray]:
    """CellProfiler ``Texture_<Feature>_<channel>_<scale>_<direction:02d>_<levels>`` features.

    13 Haralick features for each of the 4 directions, aligned with
    :func:`hts.compute.measure.features.object_ids`; see the module docstring for the definitions.
    """
    o = _Objects(labels)
    image = o.image(image)
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"scale must be at least 1 pixel, got {scale}")
    levels = int(levels)
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be 2..256, got {levels}")
    q = _quantize(image, scale_intensity, levels)
    n = o.n
    maxv = np.zeros(n, np.int64)  # mahotas' matrix size: the object's largest level + 1
    np.maximum.at(maxv, o.rank, q.ravel()[o.idx].astype(np.int64))
    maxv += 1
    feats = np.empty((len(TEXTURE_DIRECTIONS), len(HARALICK_FEATURES), n))
    has_pairs = np.ones(n, bool)
    for d, (dy, dx) in enumerate(TEXTURE_DIRECTIONS):
        rank, a, b = _pairs(o, q, dy * scale, dx * scale)
        has_pairs &= np.bincount(rank, minlength=n) > 0
        feats[d] = _haralick(rank, a, b, n, levels, maxv)
    feats[:, :, ~has_pairs] = np.nan
    return {
        f"Texture_{name}_{channel}_{scale}_{d:02d}_{levels}": feats[d, k]
        for d in range(len(TEXTURE_DIRECTIONS))
        for k, name in enumerate(HARALICK_FEATURES)
    }


def _quantize(image: np.ndarray, scale_intensity: float | None, levels: int) -> np.ndarray:
    """Gray levels 0..levels-1 as cp-measure: ``img_as_ubyte`` of the scaled image, then rescaled."""
    scale = _default_scale(image.dtype) if scale_intensity is None else float(scale_intensity)
    if np.issubdtype(image.dtype, np.floating) and scale == 1.0:
        x = image  # img_as_ubyte multiplies in the image's own float type
    else:
        x = image.astype(np.float64) / scale
    with np.errstate(invalid="ignore"):
        q = np.rint(np.multiply(x, 255, dtype=x.dtype))
    q = np.nan_to_num(np.clip(q, 0, 255), nan=0.0, posinf=0.0, neginf=0.0).astype(np.uint8)
    if levels != 256:  # skimage.exposure.rescale_intensity in float64, truncated to uint8
        q = (q / 255.0 * (levels - 1)).astype(np.uint8)
    return q


def _pairs(o: _Objects, q: np.ndarray, dy: int, dx: int):
    """(object rank, level a, level b) of every pair of same-object nonzero pixels at offset (dy, dx)."""
    h, w = o.shape
    if dy >= h or abs(dx) >= w:
        z = np.zeros(0, np.int64)
        return z, z, z
    c0, c1 = max(0, -dx), w - max(0, dx)
    sa = (slice(0, h - dy), slice(c0, c1))
    sb = (slice(dy, h), slice(c0 + dx, c1 + dx))
    la, qa, qb = o.labels[sa], q[sa], q[sb]
    m = (la > 0) & (la == o.labels[sb]) & (qa > 0) & (qb > 0)
    return o.rank_of(la[m]), qa[m].astype(np.int64), qb[m].astype(np.int64)


def _entropy_rows(p: np.ndarray) -> np.ndarray:
    """-sum p log2 p along the last axis (0 log 0 = 0), as mahotas' ``_entropy``."""
    return -np.sum(p * np.log2(np.where(p > 0, p, 1.0)), axis=-1)


def _haralick(rank, a, b, n: int, levels: int, maxv: np.ndarray) -> np.ndarray:
    """The 13 features (13, n) of the symmetric co-occurrence matrices of one direction."""
    out = np.zeros((len(HARALICK_FEATURES), n))
    if n == 0:
        return out
    L = levels
    with np.errstate(divide="ignore", invalid="ignore"):
        total = 2.0 * np.bincount(rank, minlength=n)  # symmetric: every pair is (a, b) and (b, a)
        # joint probabilities: distinct unordered (object, low, high) triples
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        key, cnt = np.unique((rank * L + lo) * L + hi, return_counts=True)
        t_obj = key // (L * L)
        t_diag = (key // L) % L == key % L
        pj = cnt / total[t_obj]  # each of p[lo, hi] and p[hi, lo]; the diagonal gets 2x
        mult = np.where(t_diag, 1.0, 2.0)
        pj = np.where(t_diag, 2.0 * pj, pj)
        asm = np.bincount(t_obj, mult * pj * pj, n)
        entropy = -np.bincount(t_obj, mult * pj * np.log2(pj), n)

        # marginal m (both marginals of a symmetric matrix), sum and difference distributions
        k = np.arange(L, dtype=np.float64)
        m = np.bincount(rank * L + a, minlength=n * L) + np.bincount(rank * L + b, minlength=n * L)
        m = m.reshape(n, L) / total[:, None]  # divided, not times 1/total: a lone level is exactly 1
        s = np.arange(2 * L, dtype=np.float64)
        ps = 2.0 * np.bincount(rank * (2 * L) + a + b, minlength=n * 2 * L).reshape(n, 2 * L) / total[:, None]
        pd = 2.0 * np.bincount(rank * L + np.abs(a - b), minlength=n * L).reshape(n, L) / total[:, None]

        mu = m @ k
        var = np.sum(m * (k - mu[:, None]) ** 2, axis=1)
        cov = 2.0 * np.bincount(rank, (a - mu[rank]) * (b - mu[rank]), n) / total
        corr = np.where(var == 0, 1.0, cov / var)
        contrast = pd @ (k * k)
        idm = pd @ (1.0 / (1.0 + k * k))
        sum_avg = ps @ s
        sum_var = np.sum(ps * (s - sum_avg[:, None]) ** 2, axis=1)
        sum_ent = _entropy_rows(ps)
        # variance of pd[0 : maxv] (numpy .var of mahotas' length-maxv vector)
        pd_mean = pd.sum(1) / maxv
        dev2 = np.where(k[None, :] < maxv[:, None], (pd - pd_mean[:, None]) ** 2, 0.0)
        diff_var = dev2.sum(1) / maxv
        diff_ent = _entropy_rows(pd)
        hx = _entropy_rows(m)
        hxy1 = 2.0 * hx  # -sum p log2(m_i m_j) of a symmetric p; also HXY2 (m sums to 1)
        info1 = np.where(hx == 0, entropy - hxy1, (entropy - hxy1) / hx)
        info2 = np.sqrt(np.maximum(0.0, 1.0 - np.exp(-2.0 * (hxy1 - entropy))))
    for i, v in enumerate(
        (asm, contrast, corr, var, idm, sum_avg, sum_var, sum_ent, entropy, diff_var, diff_ent, info1, info2)
    ):
        out[i] = v
    return out


# --------------------------------------------------------------------------- granularity
def granularity_features(
    labels: np.ndarray,
    image: np.ndarray,
    *,
    channel: str,
    spectrum_length: int = 16,
    subsample_size: float = 0.25,
    image_sample_size: float = 0.25,
    element_size: int = 10,
    scale_intensity: float | None = None,
) -> dict[str, np.ndarray]:
    """CellProfiler ``Granularity_<i>_<channel>`` (i = 1..spectrum_length), aligned with ``object_ids``.

    The image is divided by ``scale_intensity`` first (default: the dtype maximum, 1 for
    floats). All objects get NaN where subsampling leaves fewer than 2 rows or columns
    (as cp-measure).
    """
    from scipy.ndimage import map_coordinates
    from skimage.morphology import dilation, disk, erosion, reconstruction

    o = _Objects(labels)
    image = o.image(image)
    scale = _default_scale(image.dtype) if scale_intensity is None else float(scale_intensity)
    n = o.n
    names = [f"Granularity_{i}_{channel}" for i in range(1, spectrum_length + 1)]
    orig = image.astype(np.float64) / scale
    orig_shape = np.array(orig.shape)
    new_shape = (orig_shape * subsample_size).astype(int) if subsample_size < 1 else orig_shape
    if (new_shape < 2).any():
        return {k: np.full(n, np.nan) for k in names}
    if n == 0:
        return {k: np.zeros(0) for k in names}

    # subsample, then subtract the background (opening of a further subsampled image)
    if subsample_size < 1:
        i, j = np.mgrid[0 : new_shape[0], 0 : new_shape[1]].astype(float) / subsample_size
        pixels = map_coordinates(orig, (i, j), order=1)
    else:
        pixels = orig.copy()
    if image_sample_size < 1:
        back_shape = new_shape * image_sample_size
        i, j = np.mgrid[0 : back_shape[0], 0 : back_shape[1]].astype(float) / image_sample_size
        back = map_coordinates(pixels, (i, j), order=1)
    else:
        back, back_shape = pixels, new_shape
    selem = disk(element_size, dtype=bool)
    back = dilation(erosion(back, footprint=selem), footprint=selem)
    if image_sample_size < 1:
        i, j = np.mgrid[0 : new_shape[0], 0 : new_shape[1]].astype(float)
        i *= (back_shape[0] - 1) / (new_shape[0] - 1)
        j *= (back_shape[1] - 1) / (new_shape[1] - 1)
        back = map_coordinates(back, (i, j), order=1)
    pixels -= back
    pixels[pixels < 0] = 0

    # object pixels' source coordinates in the subsampled grid; map_coordinates gives 0
    # outside it (rounding can push the last row/column just past it), counted as 0
    counts = o.counts.astype(np.float64)
    sr = o.r * (float(new_shape[0] - 1) / float(orig_shape[0] - 1))
    sc = o.c * (float(new_shape[1] - 1) / float(orig_shape[1] - 1))
    inside = (sr <= new_shape[0] - 1) & (sc <= new_shape[1] - 1)
    sr, sc, rank = sr[inside], sc[inside], o.rank[inside].astype(np.int64)  # keys below exceed int32
    r0, c0 = np.floor(sr).astype(np.int64), np.floor(sc).astype(np.int64)
    fr, fc = sr - r0, sc - c0
    r1, c1 = np.minimum(r0 + 1, new_shape[0] - 1), np.minimum(c0 + 1, new_shape[1] - 1)
    # one sparse (object, subsampled pixel) -> weight operator, reduced over the object pixels
    ncol = int(new_shape[1])
    src = np.concatenate([r0 * ncol + c0, r0 * ncol + c1, r1 * ncol + c0, r1 * ncol + c1])
    wts = np.concatenate([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc])
    key, inv = np.unique(np.tile(rank, 4) * int(new_shape[0] * ncol) + src, return_inverse=True)
    op_w = np.bincount(inv, wts)
    op_obj, op_src = np.divmod(key, int(new_shape[0] * ncol))

    current = np.bincount(o.rank, orig.ravel()[o.idx], n) / counts
    start = np.maximum(current, np.finfo(float).eps)
    selem1 = disk(1, dtype=bool)
    ero = pixels.copy()
    out = {}
    for name in names:
        ero = erosion(ero, footprint=selem1)
        rec = reconstruction(ero, pixels, footprint=selem1)
        new = np.bincount(op_obj, op_w * rec.ravel()[op_src], n) / counts
        out[name] = (current - new) * 100 / start
        current = new
    return out
