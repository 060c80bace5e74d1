"""Vectorized Haralick texture and granularity against cp-measure and mahotas (the references they mirror)."""

from __future__ import annotations

import warnings

import cp_measure.bulk as bulk  # the reference implementation (dev dependency)
import mahotas.features
import numpy as np
import pytest
import tifffile
from conftest import CELLOMICS, DATA
from skimage.filters import threshold_otsu
from skimage.measure import label as cc_label

from hts.compute.measure.features import object_ids
from hts.compute.measure.texture import (
    HARALICK_FEATURES,
    TEXTURE_DIRECTIONS,
    granularity_features,
    texture_features,
)

RTOL = 1e-9
DSB_IMG = DATA / "nuclei_gt" / "dsb2018_img2d.tif"
DSB_MASK = DATA / "nuclei_gt" / "dsb2018_mask2d.tif"


def _cp(kind: str, labels: np.ndarray, pixels: np.ndarray, **kw) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return bulk.get_core_measurements()[kind](labels, pixels, **kw)


def _check_texture(labels, image, pixels, *, scale=3, levels=256, scale_intensity=None) -> dict:
    """Our features of ``image`` against cp-measure's on the scaled float ``pixels``."""
    ours = texture_features(labels, image, channel="ch", scale=scale, levels=levels, scale_intensity=scale_intensity)
    ref = _cp("texture", labels, pixels, scale=scale, gray_levels=levels)
    n = object_ids(labels).size
    assert len(ours) == len(ref) == 4 * 13
    for key, want in ref.items():
        feat, s, d, lv = key.split("_")
        got = ours[f"Texture_{feat}_ch_{s}_{d}_{lv}"]
        want = np.asarray(want, np.float64)
        assert got.shape == (n,)
        # the same objects undefined (NaN); the rest agree to rounding. atol: mahotas' raw-moment
        # formulas leave ~1e-15 where the exact value is 0 (e.g. a Correlation of 0)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-12, equal_nan=True, err_msg=key)
    return ours


@pytest.fixture(scope="module")
def dsb():
    return tifffile.imread(DSB_IMG), tifffile.imread(DSB_MASK)


@pytest.fixture(scope="module")
def cellomics():
    """Otsu nuclei of the CellProfiler example field and its three uint8 channels."""
    d0, d1, d2 = (tifffile.imread(p) for p in sorted(CELLOMICS.glob("*.tif")))
    return cc_label(d0 > threshold_otsu(d0)), (d0, d1, d2)


# ----------------------------------------------------------------------------- texture
def test_feature_names():
    lab = np.zeros((8, 8), np.int32)
    out = texture_features(lab, np.zeros((8, 8), np.uint8), channel="DNA", scale=2, levels=64)
    assert len(HARALICK_FEATURES) == 13 and TEXTURE_DIRECTIONS == ((0, 1), (1, 1), (1, 0), (1, -1))
    assert list(out) == [f"Texture_{f}_DNA_2_{d:02d}_64" for d in range(4) for f in HARALICK_FEATURES]
    assert "Texture_InfoMeas2_DNA_2_03_64" in out and all(v.shape == (0,) for v in out.values())


@pytest.mark.parametrize("scale,levels", [(3, 256), (1, 8), (5, 64), (2, 2)])
def test_real_nuclei_match_cp_measure(dsb, scale, levels):
    img, mask = dsb  # uint16 with values 0..235, ids with gaps
    ours = _check_texture(mask, img, img / 255.0, scale=scale, levels=levels, scale_intensity=255.0)
    ent = ours[f"Texture_Entropy_ch_{scale}_00_{levels}"]
    if levels == 2:  # trunc(q / 255): only saturated pixels keep level 1, none here
        assert np.isnan(ent).all()
        return
    assert object_ids(mask).size == 125 and np.isfinite(ent).sum() >= 120
    if levels == 256:  # real texture: informative values
        assert np.nanmin(ent) > 1 and np.nanmax(ours["Texture_Contrast_ch_3_02_256"]) > 10


def test_real_cellomics_field_matches_cp_measure(cellomics):
    lab, (d0, d1, d2) = cellomics
    assert object_ids(lab).size > 100
    for img in (d0, d1, d2):  # uint8: divided by 255 by default
        _check_texture(lab, img, img / 255.0, scale=2, levels=16)
    sub = lab[:200, :256]  # full 256 levels on a part of the field (cp-measure is slow there)
    _check_texture(sub, d2[:200, :256], d2[:200, :256] / 255.0, scale=3, levels=256)


def test_float_images_quantize_like_img_as_ubyte(dsb):
    img, mask = dsb
    f32 = (img / 235.0).astype(np.float32)[:256, :256]  # multiplied by 255 in float32, as skimage does
    _check_texture(mask[:256, :256], f32, f32, scale=1, levels=256)
    f64 = img / 235.0
    _check_texture(mask, f64, f64, scale=2, levels=32)


def test_single_object_matches_mahotas(dsb):
    img, mask = dsb
    q = np.rint(img / 255.0 * 255).astype(np.uint8)
    oid = int(object_ids(mask)[40])
    ys, xs = np.nonzero(mask == oid)
    crop = np.where(mask == oid, q, 0)[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    want = mahotas.features.haralick(crop, distance=2, ignore_zeros=True)
    ours = texture_features(mask, img, channel="c", scale=2, scale_intensity=255.0)
    k = list(object_ids(mask)).index(oid)
    got = np.array([[ours[f"Texture_{f}_c_2_{d:02d}_256"][k] for f in HARALICK_FEATURES] for d in range(4)])
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_objects_do_not_mix(dsb):
    """Each object's features on the full field equal those of the object alone."""
    img, mask = dsb
    full = texture_features(mask, img, channel="c", scale=3, scale_intensity=255.0)
    ids = object_ids(mask)
    for k in (0, 17, 64, 124):
        alone = texture_features(np.where(mask == ids[k], mask, 0), img, channel="c", scale=3, scale_intensity=255.0)
        for key, v in full.items():  # the same sums (BLAS may block the dot products differently)
            np.testing.assert_allclose(v[k], alone[key][0], rtol=1e-12, atol=1e-14, err_msg=key)


def test_uniform_line_and_tiny_objects():
    lab = np.zeros((20, 20), np.int32)
    lab[2:8, 2:8] = 5  # uniform square
    lab[10:18, 4] = 9  # vertical line: no horizontal or diagonal pairs
    lab[12:14, 10:12] = 2  # 2x2: no pairs at distance 3
    lab[15:19, 14:19] = 3  # touches a zero-intensity pixel
    img = np.full((20, 20), 0.5)
    img[16, 16] = 0.0
    out = texture_features(lab, img, channel="c", scale=1)
    ids = list(object_ids(lab))
    sq = ids.index(5)
    for d in range(4):
        assert out[f"Texture_AngularSecondMoment_c_1_{d:02d}_256"][sq] == 1.0
        assert out[f"Texture_Contrast_c_1_{d:02d}_256"][sq] == 0.0
        assert out[f"Texture_Correlation_c_1_{d:02d}_256"][sq] == 1.0
        assert out[f"Texture_Entropy_c_1_{d:02d}_256"][sq] == 0.0
        assert out[f"Texture_SumAverage_c_1_{d:02d}_256"][sq] == 2 * 128  # rint(0.5 * 255) = 128
    assert all(np.isnan(v[ids.index(9)]) for v in out.values())  # a direction without pairs
    assert np.isfinite(out["Texture_Entropy_c_1_00_256"][ids.index(2)])
    _check_texture(lab, img, img, scale=1)
    _check_texture(lab, img, img, scale=3)  # 2x2 object: NaN everywhere
    assert all(np.isnan(v[ids.index(2)]) for v in texture_features(lab, img, channel="c").values())


def test_ids_with_gaps_and_huge_values(dsb):
    img, mask = dsb
    crop, im = mask[:128, :128], img[:128, :128]
    dense = np.searchsorted(object_ids(crop), crop) * (crop > 0) + (crop > 0)
    huge = np.where(crop > 0, crop.astype(np.int64) * 10**11, 0)
    a = texture_features(dense, im, channel="c", scale_intensity=255.0)
    for lab in (crop, huge, huge.astype(np.uint64)):
        b = texture_features(lab, im, channel="c", scale_intensity=255.0)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_texture_bad_inputs():
    lab = np.ones((6, 6), np.int32)
    img = np.zeros((6, 6))
    with pytest.raises(ValueError, match="shape"):
        texture_features(lab, img[:-1], channel="c")
    with pytest.raises(ValueError, match="scale"):
        texture_features(lab, img, channel="c", scale=0)
    with pytest.raises(ValueError, match="levels"):
        texture_features(lab, img, channel="c", levels=300)
    # a scale beyond the image: no pairs anywhere
    assert all(np.isnan(v).all() for v in texture_features(lab, img + 0.5, channel="c", scale=6).values())


# ----------------------------------------------------------------------------- granularity
def _check_granularity(labels, image, pixels, *, scale_intensity=None, **kw):
    ours = granularity_features(labels, image, channel="ch", scale_intensity=scale_intensity, **kw)
    ref_kw = {("granular_spectrum_length" if k == "spectrum_length" else k): v for k, v in kw.items()}
    ref = _cp("granularity", labels, pixels, **ref_kw)
    assert list(ours) == [f"Granularity_{i}_ch" for i in range(1, kw.get("spectrum_length", 16) + 1)]
    for key, want in ref.items():
        got = ours[f"{key}_ch"]
        assert got.shape == (object_ids(labels).size,)
        want = np.asarray(want, np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10, equal_nan=True, err_msg=key)
    return ours


def test_granularity_real_fields_match_cp_measure(dsb, cellomics):
    img, mask = dsb
    ours = _check_granularity(mask, img, img / 255.0, scale_intensity=255.0)
    assert np.abs(ours["Granularity_1_ch"]).max() > 10  # a real spectrum
    lab, (d0, _, d2) = cellomics
    _check_granularity(lab, d0, d0 / 255.0)
    _check_granularity(lab, d2, d2 / 255.0, spectrum_length=6, element_size=4)


@pytest.mark.parametrize(
    "kw",
    [
        {"subsample_size": 0.4},  # 160 -> 64: the last source row rounds just past the grid
        {"subsample_size": 0.5, "image_sample_size": 1.0, "element_size": 5, "spectrum_length": 8},
        {"subsample_size": 1.0, "image_sample_size": 0.5, "spectrum_length": 4},
    ],
)
def test_granularity_options_and_ragged_shapes(dsb, kw):
    img, mask = dsb
    crop, im = mask[:160, 37:197], img[:160, 37:197]  # cut objects on the border, 160x160
    _check_granularity(crop, im, im / 255.0, scale_intensity=255.0, **kw)
    crop, im = mask[5:306, 3:260], img[5:306, 3:260]  # 301x257
    _check_granularity(crop, im, im / 255.0, scale_intensity=255.0, **kw)


def test_granularity_edge_cases(dsb):
    img, mask = dsb
    empty = granularity_features(np.zeros((64, 64), np.int32), img[:64, :64], channel="c")
    assert len(empty) == 16 and all(v.shape == (0,) for v in empty.values())
    small = granularity_features(np.ones((7, 40), bool), img[:7, :40], channel="c")  # 7 * 0.25 < 2 rows
    assert all(v.shape == (1,) and np.isnan(v).all() for v in small.values())
    with pytest.raises(ValueError, match="shape"):
        granularity_features(mask, img[:-1], channel="c")
    # vectorization: an object's spectrum does not depend on the other objects' labels
    full = granularity_features(mask, img, channel="c", scale_intensity=255.0)
    ids = object_ids(mask)
    alone = granularity_features(np.where(mask == ids[9], mask, 0), img, channel="c", scale_intensity=255.0)
    for k, v in full.items():
        assert v[9] == pytest.approx(alone[k][0], rel=1e-12, abs=1e-12)
