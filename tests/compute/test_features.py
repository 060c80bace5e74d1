"""Vectorized per-object features against cp-measure and regionprops (the references they mirror)."""

from __future__ import annotations

import warnings

import cp_measure.bulk as bulk  # the reference implementation (dev dependency)
import numpy as np
import pytest
from conftest import CELLOMICS
from scipy import ndimage as ndi
from skimage.measure import label as cc_label
from skimage.measure import regionprops

from hts.compute.measure.features import (
    INTENSITY_FEATURES,
    compartment_features,
    intensity_features,
    object_features,
    object_ids,
    shape_features,
)
from hts.synth import synth_field

SHAPE_KEYS = {
    "Area", "Perimeter", "FormFactor", "Compactness", "Center_X", "Center_Y",
    "BoundingBoxMinimum_X", "BoundingBoxMinimum_Y", "BoundingBoxMaximum_X", "BoundingBoxMaximum_Y",
    "BoundingBoxArea", "Extent", "MajorAxisLength", "MinorAxisLength", "Eccentricity", "Orientation",
    "EquivalentDiameter", "ConvexArea", "Solidity", "EulerNumber",
}  # fmt: skip
# integer counts and ratios of integer counts: bit-identical to the reference
SHAPE_EXACT = {
    "Area", "Center_X", "Center_Y", "BoundingBoxMinimum_X", "BoundingBoxMinimum_Y",
    "BoundingBoxMaximum_X", "BoundingBoxMaximum_Y", "BoundingBoxArea", "Extent", "ConvexArea",
    "Solidity", "EulerNumber",
}  # fmt: skip
INTENSITY_EXACT = {"MinIntensity", "MaxIntensity", "MinIntensityEdge", "MaxIntensityEdge"}
RTOL = 1e-6


def _scaled(img: np.ndarray) -> np.ndarray:
    """The pixels CellProfiler measures: integers divided by their dtype's maximum."""
    if np.issubdtype(img.dtype, np.integer):
        return img / float(np.iinfo(img.dtype).max)
    return img.astype(np.float64)


def _cp(kind: str, labels: np.ndarray, pixels: np.ndarray, *, legacy: bool = False) -> dict:
    with warnings.catch_warnings():  # cp-measure divides by a zero perimeter for 1-pixel objects
        warnings.simplefilter("ignore", RuntimeWarning)
        return bulk.get_core_measurements(legacy=legacy)[kind](labels, pixels)


def _assert_same_axis(got: np.ndarray, want: np.ndarray, eccentricity: np.ndarray) -> None:
    """Orientations in degrees agree as axes (+90 and -90 are one axis: the sign of a zero
    mu11 decides it), except for isotropic objects, where the axis is undefined."""
    defined = eccentricity > 1e-6
    diff = np.abs(got - want)[defined]
    assert np.all((diff < 1e-6) | (np.abs(diff - 180) < 1e-6)), np.column_stack([got, want])[defined][diff > 1e-6]


def _check_shape(labels: np.ndarray) -> None:
    ours = shape_features(labels)
    ref = _cp("sizeshape", labels, np.zeros(labels.shape))
    assert set(ours) == {f"AreaShape_{k}" for k in SHAPE_KEYS}
    for key in SHAPE_KEYS:
        got, want = ours[f"AreaShape_{key}"], np.asarray(ref[key], np.float64)
        assert got.shape == (object_ids(labels).size,), key
        if key in SHAPE_EXACT:
            np.testing.assert_array_equal(got, want, err_msg=key)
        elif key == "Orientation":
            _assert_same_axis(got, want, np.asarray(ref["Eccentricity"]))
        else:
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-12, err_msg=key)


def _check_intensity(labels: np.ndarray, image: np.ndarray, *, legacy: bool = False) -> None:
    ours = intensity_features(labels, image, channel="ch", quantiles="cellprofiler" if legacy else "numpy")
    ref = _cp("intensity", labels, _scaled(image), legacy=legacy)
    assert set(ours) == {f"Intensity_{k}_ch" for k in INTENSITY_FEATURES}
    for key in INTENSITY_FEATURES:
        got, want = ours[f"Intensity_{key}_ch"], np.asarray(ref[f"Intensity_{key}"], np.float64)
        if key in INTENSITY_EXACT:
            np.testing.assert_array_equal(got, want, err_msg=key)
        else:
            # MassDisplacement is a difference of two centroids (~1e-13 px absolute)
            atol = 1e-9 if key == "MassDisplacement" else 1e-12
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=key)


# ----------------------------------------------------------------------------- real and synthetic fields
@pytest.fixture(scope="module")
def cellomics():
    """Nuclei and cells of the CellProfiler example field (uint8), segmented by the classic engine."""
    import tifffile

    from hts.compute.segment.engines import engine_class, segment_field

    d0, d1, d2 = (tifffile.imread(p) for p in sorted(CELLOMICS.glob("*.tif")))
    res = segment_field(engine_class("classic")(), {"nucleus": d0, "cytoplasm": d2}, pixel_size_um=0.65)
    return res.labels, (d0, d1, d2)


@pytest.fixture(scope="module")
def synthetic():
    out = []
    for seed in (3, 8):
        f = synth_field(shape=(256, 256), seed=seed)
        out.append(({"nuclei": f.nuclei, "cells": f.cells}, tuple(f.image)))
    return out


@pytest.mark.parametrize("compartment", ["nuclei", "cells"])
def test_real_field_matches_cp_measure(cellomics, compartment):
    labels, images = cellomics
    lab = labels[compartment]
    assert object_ids(lab).size > 100
    _check_shape(lab)
    for img in images:
        _check_intensity(lab, img)
    _check_intensity(lab, images[0], legacy=True)


@pytest.mark.parametrize("compartment", ["nuclei", "cells"])
def test_synthetic_fields_match_cp_measure(synthetic, compartment):
    for labels, images in synthetic:
        lab = labels[compartment]
        _check_shape(lab)
        for img in images:
            _check_intensity(lab, img)
            _check_intensity(lab, img, legacy=True)


def test_shape_matches_regionprops(cellomics, synthetic):
    for labels in [cellomics[0]] + [lab for lab, _ in synthetic]:
        for lab in labels.values():
            ours = shape_features(lab)
            props = regionprops(lab)
            assert [p.label for p in props] == list(object_ids(lab))

            def col(attr):
                return np.array([getattr(p, attr) for p in props], np.float64)

            bbox = np.array([p.bbox for p in props], np.float64)
            np.testing.assert_array_equal(ours["AreaShape_BoundingBoxMinimum_Y"], bbox[:, 0])
            np.testing.assert_array_equal(ours["AreaShape_BoundingBoxMinimum_X"], bbox[:, 1])
            np.testing.assert_array_equal(ours["AreaShape_BoundingBoxMaximum_Y"], bbox[:, 2])
            np.testing.assert_array_equal(ours["AreaShape_BoundingBoxMaximum_X"], bbox[:, 3])
            centroid = np.array([p.centroid for p in props])
            np.testing.assert_allclose(ours["AreaShape_Center_Y"], centroid[:, 0], rtol=1e-12)
            np.testing.assert_allclose(ours["AreaShape_Center_X"], centroid[:, 1], rtol=1e-12)
            np.testing.assert_array_equal(ours["AreaShape_Area"], col("area"))
            np.testing.assert_allclose(ours["AreaShape_Perimeter"], col("perimeter"), rtol=1e-12)
            np.testing.assert_array_equal(ours["AreaShape_ConvexArea"], col("area_convex"))
            np.testing.assert_array_equal(ours["AreaShape_EulerNumber"], col("euler_number"))
            for key, attr in (
                ("MajorAxisLength", "axis_major_length"),
                ("MinorAxisLength", "axis_minor_length"),
                ("Eccentricity", "eccentricity"),
                ("EquivalentDiameter", "equivalent_diameter_area"),
            ):
                np.testing.assert_allclose(ours[f"AreaShape_{key}"], col(attr), rtol=RTOL, atol=1e-9, err_msg=key)
            _assert_same_axis(ours["AreaShape_Orientation"], np.degrees(col("orientation")), col("eccentricity"))


# ----------------------------------------------------------------------------- hard shapes
def _random_labels(rng: np.random.Generator, kind: str) -> np.ndarray:
    h, w = (int(v) for v in rng.integers(30, 90, 2))
    if kind == "blobs":  # irregular objects with holes, many touching the image edge
        noise = ndi.gaussian_filter(rng.normal(size=(h, w)), rng.uniform(0.7, 3))
        return cc_label(noise > rng.uniform(-0.1, 0.3), connectivity=1)
    if kind == "merged":  # one id over several components, non-consecutive ids
        noise = ndi.gaussian_filter(rng.normal(size=(h, w)), 1.5)
        lab = cc_label(noise > 0.1)
        return np.where(lab > 0, (lab * 7) % 11 + 5 * (lab % 3), 0)
    # "tiles": every object touches others (Voronoi cells), with scattered background pixels
    k = int(rng.integers(3, 25))
    seeds = np.zeros((h, w), np.int64)
    seeds[rng.integers(0, h, k), rng.integers(0, w, k)] = np.arange(1, k + 1) * 3
    _, (ii, jj) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    return seeds[ii, jj] * (rng.random((h, w)) > 0.05)


@pytest.mark.parametrize("kind", ["blobs", "merged", "tiles"])
def test_hard_shapes_match_cp_measure(kind):
    rng = np.random.default_rng(["blobs", "merged", "tiles"].index(kind))
    for _ in range(4):
        lab = _random_labels(rng, kind)
        if object_ids(lab).size == 0:
            continue
        _check_shape(lab)
        shape = lab.shape
        for img in (
            rng.integers(0, 65536, shape).astype(np.uint16),
            rng.integers(0, 12, shape).astype(np.uint8),  # many ties
            (rng.random(shape) ** 3).astype(np.float32),
        ):
            _check_intensity(lab, img)
            _check_intensity(lab, img, legacy=True)


# ----------------------------------------------------------------------------- edge cases
def _toy() -> tuple[np.ndarray, np.ndarray]:
    lab = np.zeros((20, 30), np.int32)
    lab[5, 5] = 7  # a single pixel
    lab[0:4, 25:30] = 3  # touches the top and right edges
    lab[10:20, 0:12] = 12  # touches the bottom-left corner ...
    lab[12:15, 3:6] = 0  # ... with a hole
    img = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 50) % 9000
    return lab, img


def test_empty_labels_give_empty_arrays():
    lab = np.zeros((16, 16), np.int32)
    assert object_ids(lab).size == 0
    sh = shape_features(lab, pixel_size_um=0.5)
    it = intensity_features(lab, np.ones((16, 16), np.uint16), channel="c")
    assert "AreaShape_Area_um2" in sh and len(it) == len(INTENSITY_FEATURES)
    assert all(v.shape == (0,) for v in (*sh.values(), *it.values()))


def test_single_pixel_and_border_objects():
    lab, img = _toy()
    _check_shape(lab)
    _check_intensity(lab, img)
    sh = shape_features(lab)
    it = intensity_features(lab, img, channel="c")
    one = list(object_ids(lab)).index(7)
    assert sh["AreaShape_Area"][one] == 1 and sh["AreaShape_ConvexArea"][one] == 1
    assert sh["AreaShape_Perimeter"][one] == 0 and np.isinf(sh["AreaShape_FormFactor"][one])  # as cp-measure
    v = img[5, 5] / 65535
    for key in ("MeanIntensity", "MinIntensity", "MedianIntensity", "MaxIntensityEdge"):
        assert it[f"Intensity_{key}_c"][one] == pytest.approx(v)
    assert it["Intensity_StdIntensity_c"][one] == 0 and it["Intensity_MassDisplacement_c"][one] == 0
    # the corner object's perimeter counts the image edge; its hole makes EulerNumber 0
    corner = list(object_ids(lab)).index(12)
    assert sh["AreaShape_EulerNumber"][corner] == 0
    assert sh["AreaShape_BoundingBoxMaximum_Y"][corner] == 20  # exclusive, as regionprops


def test_object_filling_the_image_has_no_edge_pixels():
    lab = np.ones((6, 7), np.int32)
    it = intensity_features(lab, np.full((6, 7), 0.5), channel="c")
    assert it["Intensity_MeanIntensity_c"][0] == 0.5
    assert it["Intensity_MeanIntensityEdge_c"][0] == 0  # find_boundaries: the image edge is no boundary
    assert shape_features(lab)["AreaShape_Perimeter"][0] == pytest.approx(22.0)


def test_ids_with_gaps_and_huge_values_keep_their_order():
    lab, img = _toy()
    dense = np.searchsorted(object_ids(lab), lab) * (lab > 0) + (lab > 0)  # 1..N in the same order
    huge = np.where(lab > 0, lab.astype(np.int64) * 10**11, 0)
    for sparse in (lab, lab.astype(np.uint8), lab.astype(np.uint64), huge, huge.astype(np.uint64)):
        assert list(object_ids(sparse)) == sorted(np.unique(sparse[sparse > 0]))
        for f in (shape_features, lambda x: intensity_features(x, img, channel="c")):
            a, b = f(sparse), f(dense)
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "float64"])
def test_image_dtypes_and_scale(dtype):
    lab, img16 = _toy()
    img = (img16 // 40).astype(dtype) if dtype == "uint8" else img16.astype(dtype)
    _check_intensity(lab, img)
    scale = {"uint8": 255.0, "uint16": 65535.0}.get(dtype, 1.0)
    default = intensity_features(lab, img, channel="c")
    as_float = intensity_features(lab, img.astype(np.float64) / scale, channel="c")
    explicit = intensity_features(lab, img, channel="c", scale=2.0)
    for k in default:
        np.testing.assert_allclose(default[k], as_float[k], rtol=1e-12, atol=1e-15, err_msg=k)
        if "MassDisplacement" not in k:  # scale-free
            np.testing.assert_allclose(explicit[k] * 2.0, default[k] * scale, rtol=1e-12, atol=1e-12, err_msg=k)


def test_non_finite_pixels_are_left_out():
    lab, img = _toy()
    fimg = img.astype(np.float64)
    fimg[0, 25] = np.nan
    fimg[15, 10] = np.inf
    _check_intensity(lab, fimg)
    assert all(np.isfinite(v).all() for v in intensity_features(lab, fimg, channel="c").values())


def test_bad_inputs_are_rejected():
    lab, img = _toy()
    with pytest.raises(ValueError, match="2-D"):
        shape_features(lab[None])
    with pytest.raises(ValueError, match="integer"):
        shape_features(lab.astype(float))
    with pytest.raises(ValueError, match="non-negative"):
        object_ids(-lab)
    with pytest.raises(ValueError, match="shape"):
        intensity_features(lab, img[:-1], channel="c")
    with pytest.raises(ValueError, match="quantiles"):
        intensity_features(lab, img, channel="c", quantiles="nearest")


# ----------------------------------------------------------------------------- compartments
def test_compartment_features():
    f = synth_field(shape=(192, 192), seed=5)
    nuc, cells = f.nuclei, f.cells
    images = {"DAPI": f.image[0], "GFP": f.image[1]}
    out = compartment_features(nuc, cells, images, pixel_size_um=0.65)
    assert set(out) == {"nuclei", "cells", "cytoplasm"}
    cyto = np.where(nuc > 0, 0, cells)
    for name, lab in (("nuclei", nuc), ("cells", cells), ("cytoplasm", cyto)):
        feats = out[name]
        np.testing.assert_array_equal(feats["ObjectNumber"], object_ids(lab))
        sh = shape_features(lab, pixel_size_um=0.65)
        for k, v in sh.items():
            np.testing.assert_array_equal(feats[k], v, err_msg=k)
        for ch, img in images.items():
            for k, v in intensity_features(lab, img, channel=ch).items():
                np.testing.assert_array_equal(feats[k], v, err_msg=k)
    np.testing.assert_allclose(
        out["nuclei"]["AreaShape_Area_um2"], out["nuclei"]["AreaShape_Area"] * 0.65**2, rtol=1e-12
    )
    # synthetic cells carry their nucleus' id: the ratio is nucleus mean over cytoplasm mean
    cell_ids = out["cells"]["ObjectNumber"]
    for ch in images:
        nuc_mean = dict(zip(out["nuclei"]["ObjectNumber"], out["nuclei"][f"Intensity_MeanIntensity_{ch}"]))
        cyt_mean = dict(zip(out["cytoplasm"]["ObjectNumber"], out["cytoplasm"][f"Intensity_MeanIntensity_{ch}"]))
        want = np.array([nuc_mean.get(i, np.nan) / cyt_mean.get(i, np.nan) for i in cell_ids])
        np.testing.assert_allclose(out["cells"][f"Intensity_NucCytoRatio_{ch}"], want, rtol=1e-9)
    assert np.isfinite(out["cells"]["Intensity_NucCytoRatio_DAPI"]).all()
    assert np.nanmedian(out["cells"]["Intensity_NucCytoRatio_DAPI"]) > 2  # DAPI is nuclear


def test_object_features_equal_the_per_channel_calls():
    """object_features shares pixel lists, edges and centroids between channels; the values must not change."""
    f = synth_field(shape=(160, 140), seed=5, density=0.8)
    lab = f.cells
    noisy = f.image[1].astype(np.float64)
    noisy[::7, ::5] = np.nan  # the non-finite path recomputes centroids over the finite pixels
    images = {"DAPI": f.image[0], "GFP": noisy}
    got = object_features(lab, images, pixel_size_um=0.5)
    want = {"ObjectNumber": object_ids(lab), **shape_features(lab, pixel_size_um=0.5)}
    for ch, im in images.items():
        want.update(intensity_features(lab, im, channel=ch))
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_wide_integer_range_quantiles_match_numpy():
    """Values and object ranks that do not fit a 32-bit sort key take the 64-bit path: same quantiles."""
    rng = np.random.default_rng(1)
    lab = np.repeat(np.arange(1, 11), 30).reshape(20, 15).astype(np.int32)
    img = rng.integers(0, 2**30, lab.shape).astype(np.int64)
    feats = intensity_features(lab, img, channel="x", scale=1.0)
    for i, obj in enumerate(object_ids(lab)):
        v = img[lab == obj].astype(np.float64)
        assert feats["Intensity_MedianIntensity_x"][i] == np.median(v)
        assert feats["Intensity_LowerQuartileIntensity_x"][i] == np.quantile(v, 0.25)
        assert feats["Intensity_MADIntensity_x"][i] == np.median(np.abs(v - np.median(v)))


def test_lines_have_exactly_zero_minor_axis():
    """Second moments come from integer sums over runs of pixels: a one-pixel-wide line (horizontal,
    vertical, diagonal) has exactly no width and eccentricity 1, as in regionprops."""
    lab = np.zeros((40, 40), np.int32)
    lab[3, 2:30] = 1  # horizontal
    lab[8:35, 36] = 2  # vertical
    for k in range(20):
        lab[10 + k, 5 + k] = 3  # diagonal
    feats = shape_features(lab)
    np.testing.assert_array_equal(feats["AreaShape_MinorAxisLength"], 0.0)
    np.testing.assert_array_equal(feats["AreaShape_Eccentricity"], 1.0)
    for i, rp in enumerate(regionprops(lab)):
        assert feats["AreaShape_MajorAxisLength"][i] == pytest.approx(rp.axis_major_length, rel=1e-12)
        assert feats["AreaShape_MinorAxisLength"][i] == pytest.approx(rp.axis_minor_length, abs=1e-6)


def test_moments_of_a_huge_object_match_regionprops():
    """An object whose exact second-moment sums would overflow int64 takes the float path."""
    lab = np.zeros((2600, 2500), np.int32)
    lab[10:2590, 20:2480] = 1  # area 6.3 M pixels: area * sum(dr^2) ~ 9e19 > 2**62
    lab[10:900, 20:700] = 0  # a notch: not symmetric
    lab[2000:2100, 100:200] = 2  # and a small one beside it
    feats = shape_features(lab)
    for i, rp in enumerate(regionprops(lab)):
        assert feats["AreaShape_MajorAxisLength"][i] == pytest.approx(rp.axis_major_length, rel=1e-9)
        assert feats["AreaShape_MinorAxisLength"][i] == pytest.approx(rp.axis_minor_length, rel=1e-9)
        assert feats["AreaShape_Eccentricity"][i] == pytest.approx(rp.eccentricity, rel=1e-9)
        assert feats["AreaShape_Orientation"][i] == pytest.approx(np.degrees(rp.orientation), rel=1e-9)
