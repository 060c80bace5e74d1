"""A cell coordinate system for rod-shaped cells (bacteria), vectorized over all objects of a field.

Every object gets a frame and a curved midline, all from per-object sums (bincount) and
one batched 3x3 solve; no per-object Python loop:

- **Axis.** The principal axis of the pixel coordinates (second central moments),
  through the centroid. Its direction e points to increasing column, or to increasing
  row when the axis is steeper than 45 degrees (|e_y| > |e_x|). So **pole 0** is the end
  with the smaller column (the smaller row for steep cells) and pole 1 the other end;
  this is deterministic, unlike an eigenvector's sign.
- **Frame.** A pixel centre (y, x) has axial coordinate s = (p - centroid) . e and
  transverse coordinate u = (p - centroid) . n with n = (-e_y, e_x) (x, y order).
- **Midline.** u = a s^2 + b s + c, least squares over the object's pixels (an
  infinitesimal ridge on a and b keeps objects with fewer than 3 distinct s values
  straight).
- A pixel's **foot** on the midline is its closest point, found by Newton steps from
  the midline point at the same s; its distance d to the midline is the distance to
  that foot. Its **position** 0..1 is the midline arc length from pole 0 to the foot
  (clipped to the poles) divided by the length.

Features (all in pixels unless ``_um``), aligned with :func:`hts.compute.measure.features.object_ids`:

- ``Rod_Length``: arc length of the midline between the smallest and the largest axial
  projection s of the object's pixel centres, nothing added. Pixel centres lie up to
  about a pixel inside the outline at each pole, so this is shorter than the outline's
  pole-to-pole length: by 0.2-1.8 px (~1 px on average) for drawn rods of width 6-12 at
  random angles and sub-pixel offsets.
- ``Rod_Width``: sqrt(12 mean(d^2) + 1) over the pixels at positions 0.25..0.75 (the
  cylindrical part; all pixels if none are there): the width of a uniformly filled band
  with that second moment of d. It counts the pixel rows of an axis-aligned band exactly
  (offsets 0, +-1, .. or +-1/2, +-3/2, .. have mean square (w^2 - 1) / 12); drawn rods
  of width 8-12 at random angles and offsets measure within -0.1..+0.3 px (width 6:
  -0.3..+0.4, as the pixel area itself varies with the lattice). Unlike an area / length
  estimate it does not depend on the length or on the caps.
- ``Rod_Curvature``: mean |curvature| (1/px) of the midline's central half: the angle its
  tangent turns between the axial quarter points s_lo + (s_hi - s_lo) / 4 and
  s_hi - (s_hi - s_lo) / 4, divided by the arc length between them; ~0 for straight
  rods. On drawn circular arcs of width 8, radius R = 30-60 and spans of 60-120 degrees
  it measures 0.85-1.08 / R, low for short arcs (the round caps extend them along their
  end tangents); the parabola's vertex curvature would read 0.89-1.26 / R (least squares
  bends the parabola to follow the arc's ends).
- ``Rod_Volume`` and ``Rod_SurfaceArea``: the spherocylinder (a cylinder of diameter W
  with hemispherical caps; Pappus makes the formulas hold for a bent one too, with the
  midline length) of the object's width W whose outline area equals the pixel area A:
  pole-to-pole length L_o = A / W + W (1 - pi/4), at least W; V = pi W^2 / 4 (L_o - W)
  + pi W^3 / 6, S = pi W L_o. The pixel area is an unbiased outline area, so L_o
  avoids the half-pixel bias of ``Rod_Length`` at the poles.
- With ``pixel_size_um``: ``Rod_Length_um``, ``Rod_Width_um``, ``Rod_Curvature_per_um``
  (1/um), ``Rod_SurfaceArea_um2``, ``Rod_Volume_um3``.
- For each channel in ``images``: ``Rod_Profile_<channel>_<k:02d>``, the mean intensity
  (divided by the dtype maximum, 1 for floats, as ``intensity_features``; non-finite
  pixels left out) of the pixels whose position lies in bin k of ``profile_bins``
  equal bins of 0..1 (position 1 in the last bin); NaN for an empty bin.

A single-pixel object has length 0 and position 0.5.
"""

from __future__ import annotations

import numpy as np

from hts.compute.measure.features import _check_labels, _default_scale, _Objects

__all__ = ["rod_features", "axial_position"]

_NEWTON_STEPS = 3
_SMALL_A = 1e-6  # 1/px: below, the arc length uses a 2nd-order expansion in a


class _Rods:
    """Per-object frame and quadratic midline of every object of a label image."""

    def __init__(self, o: _Objects):
        n, rank = o.n, o.rank
        self.n = n
        area = o.counts.astype(np.float64)
        r, c = o.r.astype(np.float64), o.c.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.cy = np.bincount(rank, r, n) / area
            self.cx = np.bincount(rank, c, n) / area
            dy, dx = r - self.cy[rank], c - self.cx[rank]
            syy = np.bincount(rank, dy * dy, n) / area
            sxx = np.bincount(rank, dx * dx, n) / area
            sxy = np.bincount(rank, dx * dy, n) / area
        theta = 0.5 * np.arctan2(2 * sxy, sxx - syy)
        ex, ey = np.cos(theta), np.sin(theta)
        flip = np.where(np.abs(ey) > np.abs(ex), ey < 0, ex < 0)
        self.ex, self.ey = np.where(flip, -ex, ex), np.where(flip, -ey, ey)
        s, u = self.frame(rank, r, c)

        # least squares u = A t^2 + B t + C with t = s / h (h: largest |s|), batched
        h = np.zeros(n)
        np.maximum.at(h, rank, np.abs(s))
        h[h == 0] = 1.0
        t = s / h[rank]
        t2 = t * t
        S = [area] + [np.bincount(rank, t**k, n) for k in range(1, 5)]
        U = [np.bincount(rank, u * tk, n) for tk in (np.ones_like(t), t, t2)]
        M = np.empty((n, 3, 3))
        for i in range(3):
            for j in range(3):
                M[:, i, j] = S[4 - i - j]
        ridge = 1e-9 * area
        M[:, 0, 0] += ridge
        M[:, 1, 1] += ridge
        rhs = np.stack([U[2], U[1], U[0]], axis=1)
        coef = np.linalg.solve(M, rhs[..., None])[..., 0] if n else np.zeros((0, 3))
        self.a, self.b, self.c = coef[:, 0] / h**2, coef[:, 1] / h, coef[:, 2]

        self.s_lo = np.full(n, np.inf)
        self.s_hi = np.full(n, -np.inf)
        np.minimum.at(self.s_lo, rank, s)
        np.maximum.at(self.s_hi, rank, s)
        self.length = self.arc(np.arange(n), self.s_lo, self.s_hi)
        self.pixel_s, self.pixel_u = s, u

    def frame(self, rank, y, x):
        """Axial and transverse coordinates of points (y, x) of objects ``rank``."""
        dy, dx = y - self.cy[rank], x - self.cx[rank]
        ex, ey = self.ex[rank], self.ey[rank]
        return dx * ex + dy * ey, -dx * ey + dy * ex

    def foot(self, rank, s, u):
        """Axial coordinate of the closest midline point and the distance to it."""
        a, b, c = self.a[rank], self.b[rank], self.c[rank]
        f = s.copy()
        for _ in range(_NEWTON_STEPS):  # minimise (f - s)^2 + (m(f) - u)^2
            m = (a * f + b) * f + c
            dm = 2 * a * f + b
            g = (f - s) + (m - u) * dm
            hess = 1 + dm * dm + (m - u) * 2 * a
            f = np.where(hess > 0.1, f - g / np.where(hess > 0.1, hess, 1.0), f)
        m = (a * f + b) * f + c
        return f, np.hypot(f - s, m - u)

    def arc(self, rank, s1, s2):
        """Midline arc length from s1 to s2 (closed form; 2nd order in a where a is tiny)."""
        a, b = self.a[rank], self.b[rank]
        small = np.abs(a) < _SMALL_A
        with np.errstate(divide="ignore", invalid="ignore"):
            z1, z2 = 2 * a * s1 + b, 2 * a * s2 + b
            exact = (_g(z2) - _g(z1)) / (4 * a)
            q = np.sqrt(1 + b * b)
            approx = q * (s2 - s1) + (a * b / q) * (s2**2 - s1**2) + (2 * a * a / (3 * q**3)) * (s2**3 - s1**3)
        return np.where(small, approx, exact)

    def position(self, rank, s, u):
        """Normalized arc position 0..1 of points with frame coordinates (s, u), and their distance."""
        f, d = self.foot(rank, s, u)
        f = np.clip(f, self.s_lo[rank], self.s_hi[rank])
        length = self.length[rank]
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = np.where(length > 0, self.arc(rank, self.s_lo[rank], f) / length, 0.5)
        return np.clip(pos, 0.0, 1.0), d


def _g(z):
    """2 * integral_0^z sqrt(1 + x^2) dx."""
    return z * np.sqrt(1 + z * z) + np.arcsinh(z)


def rod_features(
    labels: np.ndarray,
    images: dict[str, np.ndarray] | None = None,
    *,
    pixel_size_um: float | None = None,
    profile_bins: int = 10,
) -> dict[str, np.ndarray]:
    """``Rod_*`` features of every object, aligned with ``object_ids``; see the module docstring."""
    o = _Objects(labels)
    images = images or {}
    for ch, img in images.items():
        if np.shape(img) != o.shape:
            raise ValueError(f"image {ch!r} shape {np.shape(img)} differs from labels shape {o.shape}")
    if int(profile_bins) < 1:
        raise ValueError(f"profile_bins must be at least 1, got {profile_bins}")
    bins = int(profile_bins)
    g = _Rods(o)
    n, rank = o.n, o.rank
    pos, d = g.position(rank, g.pixel_s, g.pixel_u)
    area = o.counts.astype(np.float64)

    central = (pos >= 0.25) & (pos <= 0.75)
    n_central = np.bincount(rank[central], minlength=n)
    use = central | (n_central == 0)[rank]
    with np.errstate(divide="ignore", invalid="ignore"):
        msd = np.bincount(rank[use], d[use] ** 2, n) / np.bincount(rank[use], minlength=n)
        width = np.sqrt(12 * msd + 1)
        # mean curvature of the central half: tangent turning angle / arc length between the axial quarters
        ids = np.arange(n)
        q1, q3 = g.s_lo + (g.s_hi - g.s_lo) / 4, g.s_hi - (g.s_hi - g.s_lo) / 4
        turn = np.abs(np.arctan(2 * g.a * q3 + g.b) - np.arctan(2 * g.a * q1 + g.b))
        central_arc = g.arc(ids, q1, q3)
        curvature = np.where(central_arc > 0, turn / central_arc, 0.0)
        outline = np.maximum(area / width + width * (1 - np.pi / 4), width)
        volume = np.pi * width**2 / 4 * (outline - width) + np.pi * width**3 / 6
        surface = np.pi * width * outline
    out = {
        "Rod_Length": g.length,
        "Rod_Width": width,
        "Rod_Curvature": curvature,
        "Rod_Volume": volume,
        "Rod_SurfaceArea": surface,
    }
    if pixel_size_um is not None:
        px = float(pixel_size_um)
        out["Rod_Length_um"] = g.length * px
        out["Rod_Width_um"] = width * px
        out["Rod_Curvature_per_um"] = curvature / px
        out["Rod_Volume_um3"] = volume * px**3
        out["Rod_SurfaceArea_um2"] = surface * px**2

    b = np.minimum((pos * bins).astype(np.int64), bins - 1)
    for ch, img in images.items():
        img = np.asarray(img)
        v = img.ravel()[o.idx].astype(np.float64) / _default_scale(img.dtype)
        ok = np.isfinite(v)
        key = rank[ok].astype(np.int64) * bins + b[ok]
        with np.errstate(divide="ignore", invalid="ignore"):
            prof = np.bincount(key, v[ok], n * bins) / np.bincount(key, minlength=n * bins)
        prof = prof.reshape(n, bins)
        for k in range(bins):
            out[f"Rod_Profile_{ch}_{k:02d}"] = prof[:, k]
    return out


def axial_position(labels: np.ndarray, points_yx: np.ndarray, cell_ids: np.ndarray) -> np.ndarray:
    """Position 0..1 of each point (y, x) along its cell's midline; 0 and 1 are the poles.

    Same frame, midline and pole order as :func:`rod_features`; points beyond a pole get
    0 or 1. NaN where the cell id is 0 or not an object of ``labels``.
    """
    labels = _check_labels(labels)
    pts = np.asarray(points_yx, np.float64).reshape(-1, 2)
    cell_ids = np.asarray(cell_ids).ravel()
    if cell_ids.size != len(pts):
        raise ValueError(f"{len(pts)} points but {cell_ids.size} cell ids")
    out = np.full(len(pts), np.nan)
    o = _Objects(labels)
    if o.n == 0 or len(pts) == 0:
        return out
    j = np.minimum(np.searchsorted(o.ids, cell_ids), o.n - 1)
    valid = (cell_ids > 0) & (o.ids[j] == cell_ids)
    if not valid.any():
        return out
    g = _Rods(o)
    rank = j[valid]
    s, u = g.frame(rank, pts[valid, 0], pts[valid, 1])
    out[valid] = g.position(rank, s, u)[0]
    return out
