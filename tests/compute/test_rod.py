"""Rod-shaped cell coordinates and features on drawn rods of known geometry."""

from __future__ import annotations

import numpy as np
import pytest

from hts.compute.measure.features import object_ids
from hts.compute.measure.rod import axial_position, rod_features

BASE = ("Rod_Length", "Rod_Width", "Rod_Curvature", "Rod_Volume", "Rod_SurfaceArea")


def _grid(shape):
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    return y, x


def spherocylinder(shape, cy, cx, length, width, angle_deg):
    """Pixel centres within width/2 of the axis segment: pole-to-pole ``length``, axis at
    ``angle_deg`` from the +x axis towards +y (rows)."""
    y, x = _grid(shape)
    ex, ey = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    s = (x - cx) * ex + (y - cy) * ey
    u = -(x - cx) * ey + (y - cy) * ex
    half = (length - width) / 2
    return np.hypot(s - np.clip(s, -half, half), u) <= width / 2


def arc_rod(shape, cy, cx, radius, width, span_deg):
    """A bent rod: pixel centres within width/2 of a circular arc (centre (cy, cx), spanning
    ``span_deg`` symmetric about straight down), i.e. with round caps."""
    y, x = _grid(shape)
    a0, a1 = np.pi / 2 - np.radians(span_deg) / 2, np.pi / 2 + np.radians(span_deg) / 2
    ang = np.arctan2(y - cy, x - cx)
    d = np.where((ang >= a0) & (ang <= a1), np.abs(np.hypot(y - cy, x - cx) - radius), np.inf)
    for a in (a0, a1):
        d = np.minimum(d, np.hypot(y - cy - radius * np.sin(a), x - cx - radius * np.cos(a)))
    return d <= width / 2


def _spherocylinder_volume_surface(length, width):
    return np.pi * width**2 / 4 * (length - width) + np.pi * width**3 / 6, np.pi * width * length


def _one(labels, **kw):
    out = rod_features(labels, **kw)
    return {k: float(v[0]) for k, v in out.items()}


# ----------------------------------------------------------------------------- straight rods
@pytest.mark.parametrize("angle", [0, 30, 45, 90, 135, 160])
@pytest.mark.parametrize("length,width", [(40, 10), (30, 8)])
def test_straight_rods(angle, length, width):
    lab = spherocylinder((80, 80), 40.3, 39.6, length, width, angle).astype(np.int32)
    f = _one(lab, pixel_size_um=0.5)
    # pixel centres end ~1/2 px inside each pole: the midline between them is up to ~2 px shorter
    assert length - 2 <= f["Rod_Length"] <= length
    assert f["Rod_Width"] == pytest.approx(width, abs=0.5)
    assert f["Rod_Curvature"] < 0.005  # 1/R for R > 200 px
    vol, surf = _spherocylinder_volume_surface(length, width)
    # the pixel area itself differs by up to ~2% from the continuous outline's
    assert f["Rod_Volume"] == pytest.approx(vol, rel=0.06)
    assert f["Rod_SurfaceArea"] == pytest.approx(surf, rel=0.03)
    assert f["Rod_Length_um"] == pytest.approx(f["Rod_Length"] * 0.5, rel=1e-12)
    assert f["Rod_Width_um"] == pytest.approx(f["Rod_Width"] * 0.5, rel=1e-12)
    assert f["Rod_Curvature_per_um"] == pytest.approx(f["Rod_Curvature"] / 0.5, rel=1e-12)
    assert f["Rod_SurfaceArea_um2"] == pytest.approx(f["Rod_SurfaceArea"] * 0.25, rel=1e-12)
    assert f["Rod_Volume_um3"] == pytest.approx(f["Rod_Volume"] * 0.125, rel=1e-12)


def test_axis_aligned_width_counts_pixel_rows():
    lab = np.zeros((30, 60), np.int32)
    for k, rows in enumerate((1, 4, 7), start=1):
        lab[2 + 9 * (k - 1) : 2 + 9 * (k - 1) + rows, 5:55] = k  # rectangles 50 px long
    f = rod_features(lab)
    np.testing.assert_allclose(f["Rod_Width"], [1, 4, 7], rtol=1e-9)
    np.testing.assert_allclose(f["Rod_Length"], 49, rtol=1e-9)  # first to last pixel centre
    np.testing.assert_allclose(f["Rod_Curvature"], 0, atol=1e-12)


# ----------------------------------------------------------------------------- bent rods
@pytest.mark.parametrize("radius,span", [(40, 90), (60, 60), (32, 120)])
def test_arc_curvature(radius, span):
    lab = arc_rod((200, 200), 30.2, 100.4, radius, 8, span).astype(np.int32)
    f = _one(lab)
    assert f["Rod_Curvature"] == pytest.approx(1 / radius, rel=0.15)
    # midline length: the arc plus the two caps' radii, minus ~1 px (pixel centres)
    assert f["Rod_Length"] == pytest.approx(radius * np.radians(span) + 8 - 1, abs=2)
    assert f["Rod_Width"] == pytest.approx(8, abs=0.6)
    straight = _one(spherocylinder((200, 200), 100.2, 100.4, f["Rod_Length"], 8, 0).astype(np.int32))
    assert f["Rod_Curvature"] > 5 * straight["Rod_Curvature"]


# ----------------------------------------------------------------------------- profiles and positions
@pytest.mark.parametrize("angle", [0, 45, 80, 100, 170])
def test_gradient_profile_is_monotonic(angle):
    lab = spherocylinder((80, 80), 40.3, 39.6, 50, 10, angle).astype(np.int32)
    y, x = _grid(lab.shape)
    ex, ey = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    along = (x - 39.6) * ex + (y - 40.3) * ey  # increases along the axis direction
    # pole 0 has the smaller column, or the smaller row when the axis is steeper than 45 degrees
    if abs(ey) > abs(ex) and ey < 0 or abs(ey) <= abs(ex) and ex < 0:
        along = -along
    img = (1000 + 10 * along).astype(np.uint16)
    f = rod_features(lab, {"GFP": img, "flat": np.full(lab.shape, 0.25)}, profile_bins=8)
    prof = np.array([f[f"Rod_Profile_GFP_{k:02d}"][0] for k in range(8)]) * 65535
    assert np.all(np.diff(prof) > 20)  # ~6 px per bin at 10 counts/px
    assert prof[0] < 1000 - 150 and prof[-1] > 1000 + 150
    np.testing.assert_allclose([f[f"Rod_Profile_flat_{k:02d}"][0] for k in range(8)], 0.25)


def test_profile_bins_empty_and_non_finite():
    lab = spherocylinder((40, 40), 20.3, 19.6, 12, 4, 0).astype(np.int32)
    img = np.ones(lab.shape)
    img[lab > 0] = np.where(np.arange((lab > 0).sum()) % 5 == 0, np.nan, 1.0)  # NaN pixels left out
    f = rod_features(lab, {"c": img}, profile_bins=40)  # 40 bins on an ~11 px midline
    prof = np.array([f[f"Rod_Profile_c_{k:02d}"][0] for k in range(40)])
    assert np.isnan(prof).sum() >= 20 and np.all(prof[np.isfinite(prof)] == 1.0)
    assert np.isfinite(prof[0]) and np.isfinite(prof[-1])  # the poles' pixels


def test_axial_position_poles_and_missing_cells():
    lab = np.zeros((100, 120), np.int32)
    lab[spherocylinder(lab.shape, 30.4, 40.2, 40, 10, 20)] = 3
    lab[spherocylinder(lab.shape, 70.3, 80.1, 36, 8, 100)] = 8  # steep: pole 0 at the top
    e3 = np.array([np.sin(np.radians(20)), np.cos(np.radians(20))])  # (y, x)
    e8 = np.array([np.sin(np.radians(100)), np.cos(np.radians(100))])
    pts = np.array(
        [
            (30.4, 40.2) - 19.5 * e3,  # left tip of cell 3
            (30.4, 40.2) + 19.5 * e3,
            (30.4, 40.2),
            (30.4, 40.2) - 30 * e3,  # beyond the pole
            (70.3, 80.1) - 17.5 * e8,  # top tip of cell 8 (e8 points down-left)
            (70.3, 80.1) + 17.5 * e8,
            (5.0, 5.0),
            (50.0, 50.0),
        ]
    )
    ids = np.array([3, 3, 3, 3, 8, 8, 0, 5])
    pos = axial_position(lab, pts, ids)
    np.testing.assert_allclose(pos[:6], [0, 1, 0.5, 0, 0, 1], atol=0.03)
    assert np.isnan(pos[6]) and np.isnan(pos[7])  # background, and an id with no object
    assert axial_position(lab, np.zeros((0, 2)), np.zeros(0, int)).shape == (0,)
    assert np.isnan(axial_position(np.zeros((9, 9), np.int32), pts[:2], ids[:2])).all()
    with pytest.raises(ValueError, match="cell ids"):
        axial_position(lab, pts, ids[:-1])


def test_pixels_and_points_share_one_coordinate_system():
    lab = arc_rod((150, 150), 20.2, 75.4, 45, 8, 80).astype(np.int32) * 4
    y, x = np.nonzero(lab)
    img = np.zeros(lab.shape)
    img[y, x] = axial_position(lab, np.column_stack([y, x]), lab[y, x])  # each pixel's own position
    f = rod_features(lab, {"pos": img}, profile_bins=5)
    prof = np.array([f[f"Rod_Profile_pos_{k:02d}"][0] for k in range(5)])
    for k in range(5):  # every pixel of bin k has its position in [k/5, (k+1)/5]
        assert k / 5 - 1e-12 <= prof[k] <= (k + 1) / 5 + 1e-12
    assert img[lab > 0].min() < 0.01 and img[lab > 0].max() > 0.99  # the poles' pixels


# ----------------------------------------------------------------------------- fields
def _field():
    lab = np.zeros((160, 200), np.int32)
    rods = [
        (spherocylinder(lab.shape, 30.3, 40.7, 40, 10, 10), 7),
        (spherocylinder(lab.shape, 30.6, 110.2, 30, 8, 80), 2),
        (spherocylinder(lab.shape, 100.1, 40.4, 44, 9, 135), 51),
        (arc_rod(lab.shape, 60.2, 140.3, 40, 8, 90), 12),
        (spherocylinder(lab.shape, 140.2, 120.5, 5, 3, 0), 9),  # tiny
    ]
    for mask, oid in rods:
        assert not (lab[mask] > 0).any()
        lab[mask] = oid
    lab[150:152, 10] = 30  # two pixels
    lab[155, 190] = 31  # one pixel
    rows, cols = np.nonzero(lab == 51)
    lab[rows[rows == rows.max()], cols[rows == rows.max()]] = 7  # a stray pixel of cell 7: one id, two parts
    return lab


def test_objects_do_not_mix():
    lab = _field()
    rng = np.random.default_rng(0)
    imgs = {"a": rng.random(lab.shape), "b": rng.integers(0, 4000, lab.shape).astype(np.uint16)}
    full = rod_features(lab, imgs, pixel_size_um=0.1)
    ids = object_ids(lab)
    assert list(ids) == [2, 7, 9, 12, 30, 31, 51]
    assert all(v.shape == (7,) for v in full.values())
    for k, oid in enumerate(ids):
        alone = rod_features(np.where(lab == oid, lab, 0), imgs, pixel_size_um=0.1)
        for key, v in full.items():
            want = alone[key][0]
            np.testing.assert_allclose(v[k], want, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=f"{oid} {key}")
    one, two = list(ids).index(31), list(ids).index(30)
    assert full["Rod_Length"][one] == 0 and full["Rod_Width"][one] == 1 and full["Rod_Curvature"][one] == 0
    assert full["Rod_Length"][two] == 1 and full["Rod_Width"][two] == pytest.approx(1)
    assert all(np.isfinite(full[k]).all() for k in BASE)


def test_orientation_is_deterministic_and_mirror_consistent():
    lab = _field()
    f = rod_features(lab)
    flipped = rod_features(lab[::-1, ::-1].copy())
    for k in BASE:
        np.testing.assert_allclose(flipped[k], f[k], rtol=1e-9, atol=1e-12, err_msg=k)
    # a point on a rod keeps its position when labels are relabelled, and mirrors with the image
    pt = np.array([[29.0, 30.0]])
    p = axial_position(lab, pt, [7])[0]
    q = axial_position(lab[::-1, ::-1].copy(), [[159 - 29.0, 199 - 30.0]], [7])[0]
    assert p < 0.3 and q == pytest.approx(1 - p, abs=1e-9)
    assert axial_position(lab * 1000, pt, [7000])[0] == p


def test_empty_and_bad_inputs():
    lab = np.zeros((16, 16), np.int32)
    out = rod_features(lab, {"c": np.ones((16, 16))}, pixel_size_um=0.1, profile_bins=3)
    assert set(out) == set(BASE) | {
        "Rod_Length_um", "Rod_Width_um", "Rod_Curvature_per_um", "Rod_Volume_um3", "Rod_SurfaceArea_um2",
        "Rod_Profile_c_00", "Rod_Profile_c_01", "Rod_Profile_c_02",
    }  # fmt: skip
    assert all(v.shape == (0,) for v in out.values())
    assert set(rod_features(lab)) == set(BASE)
    with pytest.raises(ValueError, match="shape"):
        rod_features(lab, {"c": np.ones((15, 16))})
    with pytest.raises(ValueError, match="profile_bins"):
        rod_features(lab, profile_bins=0)
    with pytest.raises(ValueError, match="integer"):
        rod_features(lab.astype(float))
