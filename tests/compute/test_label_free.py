"""Label-free inputs on real images: normalisation across dtypes, the scale estimate, the field sanity checks,
the whole-cell targets and the transmitted-light augmentation."""

from __future__ import annotations

import sys
from pathlib import Path

import nd2
import numpy as np
import pytest
import tifffile
from skimage.transform import rescale

from hts.compute.analysis.metrics import match_instances
from hts.compute.segment.engines import engine_class, segment_field
from hts.compute.segment.sanity import dark_background_skew, field_checks
from hts.compute.segment.scale import engine_nucleus_diameter_um, estimate_pixel_size, object_diameters_px
from hts.compute.train import training as T
from hts.compute.train.targets import three_class

DATA = Path(__file__).parents[1] / "data"
HELA = DATA / "brightfield/brifiseg_hela_019"
A549 = DATA / "brightfield/brifiseg_a549_054"
PHASE = DATA / "phase_cells/usiigaci_set41"


@pytest.fixture(scope="module")
def hela() -> tuple[np.ndarray, np.ndarray]:
    return tifffile.imread(f"{HELA}_bf.tif"), tifffile.imread(f"{HELA}_mask.tif")


@pytest.fixture(scope="module")
def dsb() -> tuple[np.ndarray, np.ndarray]:
    return tifffile.imread(DATA / "nuclei_gt/dsb2018_img2d.tif"), tifffile.imread(DATA / "nuclei_gt/dsb2018_mask2d.tif")


def _variants(x01: np.ndarray) -> dict[str, np.ndarray]:
    """One image as a plate imager or a pipeline might hand it over: float 0-1, float 0-255, uint16, uint8."""
    return {
        "float 0-1": x01.astype(np.float32),
        "float 0-255": (x01 * 255).astype(np.float32),
        "uint16": np.round(x01 * 65535).astype(np.uint16),
        "uint8": np.round(x01 * 255).astype(np.uint8),
    }


def test_normalization_gives_the_same_input_whatever_the_dtype_or_range(hela):
    img, _ = hela
    assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0  # HeLa: min-max normalised by the source
    ref = T.normalize_channels(img)[0]
    assert np.percentile(ref, 1) == pytest.approx(0.0, abs=0.02) and np.percentile(ref, 99.8) == pytest.approx(
        1.0, abs=0.02
    )
    for name, v in _variants(img).items():
        out = T.normalize_channels(v)[0]
        # uint8 quantises the 0-1 image into 255 steps: within a step of the float result, relative to the normalised range
        tol = 1e-5 if name.startswith("float") else (2e-4 if name == "uint16" else 0.03)
        assert np.abs(out - ref).max() < tol, name


def test_deep_engine_input_matches_training_normalization(hela):
    """The engine maps each role with the field's percentiles exactly as the training samples were made."""
    eng = engine_class("brightfield-unet")(backend="torch")
    img, _ = hela
    for v in _variants(img).values():
        ctx = eng.prepare({"brightfield": v}, 0.5)
        lo, hi = ctx["norm"]["brightfield"]
        x = (v.astype(np.float32) - lo) / (hi - lo)
        np.testing.assert_allclose(x, T.normalize_channels(v)[0], atol=1e-5)


def test_brightfield_unet_segments_every_dtype_alike(hela):
    eng = engine_class("brightfield-unet")(backend="torch")
    img, _ = hela
    labels = {
        k: segment_field(eng, {"brightfield": v}, pixel_size_um=0.3).labels["nuclei"] for k, v in _variants(img).items()
    }
    ref = labels["float 0-1"]
    assert len(np.unique(ref)) - 1 > 10
    for k, lab in labels.items():
        m = match_instances(ref, lab, (0.5,))["0.5"]
        assert m["f1"] >= 0.95, (k, m)


# ---------------------------------------------------------------------------------------- scale estimate


def test_estimate_pixel_size_of_real_nuclei_without_metadata(dsb):
    img, gt = dsb
    eng = engine_class("classic")()
    d_true = float(np.median(object_diameters_px(gt)))
    est = estimate_pixel_size(eng, [{"nucleus": img}])
    expected = (
        engine_nucleus_diameter_um(eng) / d_true
    )  # the pixel size at which the median nucleus is the engine's size
    assert est is not None and est.pixel_size_um == pytest.approx(expected, rel=0.15)
    assert est.diameter_px == pytest.approx(d_true, rel=0.15)
    assert est.message() == (
        f"pixel size unknown: nuclei measure ~{est.diameter_px:.0f} px, segmenting as if "
        f"{est.pixel_size_um:.3g} µm/px; pass --pixel-size to fix it"
    )
    # the same nuclei at half the resolution: twice the pixel size
    half = rescale(img.astype(np.float32), 0.5, anti_aliasing=True, preserve_range=True)
    est2 = estimate_pixel_size(eng, [{"nucleus": half}])
    assert est2 is not None and est2.pixel_size_um == pytest.approx(2 * est.pixel_size_um, rel=0.15)


def test_estimate_pixel_size_sees_each_candidate_at_its_own_scale(dsb):
    """The nuclei engine's per-field adapt_scale is off while the pixel size is estimated (each
    candidate must be judged at its own scale, in one network pass), and back on afterwards."""
    img, gt = dsb
    eng = engine_class("nuclei")(backend="torch")
    passes = []
    maps_at = eng._maps_at
    eng._maps_at = lambda *a: passes.append(a[1]) or maps_at(*a)
    est = estimate_pixel_size(eng, [{"nucleus": img[:256, :256]}], candidates=(0.25, 0.5, 1.0))
    assert est is not None and eng.params.adapt_scale
    assert len(passes) == 3 + 1  # one per candidate and the refinement


def test_estimate_pixel_size_gives_up_on_an_empty_field():
    eng = engine_class("classic")()
    flat = np.full((256, 256), 100, np.uint16)
    assert estimate_pixel_size(eng, [{"nucleus": flat}]) is None


# ---------------------------------------------------------------------------------------- sanity checks


def test_dark_objects_on_a_bright_background_are_flagged_naming_the_channel():
    with nd2.ND2File(DATA / "nd2/example-pbmc.nd2") as f:
        dapi = np.asarray(f.asarray())[1]  # bright background, dark dye-excluding cells
    assert dark_background_skew(dapi) < -0.35
    checks = field_checks(
        {"nucleus": dapi}, {}, pixel_size_um=0.647, nucleus_diameter_um=12, channels={"nucleus": "DAPI"}
    )
    assert [c["check"] for c in checks] == ["dark_objects"]
    assert checks[0]["channel"] == "DAPI" and "DAPI" in checks[0]["message"] and "dark objects" in checks[0]["message"]


def test_a_plausible_field_passes_and_implausible_outputs_are_flagged(dsb):
    img, gt = dsb
    assert dark_background_skew(img) > 0.4
    assert field_checks({"nucleus": img}, {"nuclei": gt}, pixel_size_um=0.45, nucleus_diameter_um=10) == []
    # the same nuclei read at a pixel size ten times too large are 100 µm across
    (c,) = field_checks({"nucleus": img}, {"nuclei": gt}, pixel_size_um=4.5, nucleus_diameter_um=10)
    assert c["check"] == "object_size" and c["value"] > 90
    # objects tiling the field (background cut into polygons)
    tiles = (np.arange(256)[:, None] // 32 * 8 + np.arange(256)[None, :] // 32 + 1).astype(np.int32)
    names = [
        c["check"]
        for c in field_checks(
            {"nucleus": img[:256, :256]}, {"nuclei": tiles}, pixel_size_um=0.3, nucleus_diameter_um=10
        )
    ]
    assert names == ["objects_fill_field"]


# ---------------------------------------------------------------------------------------- whole-cell targets


def test_three_class_marks_the_line_between_touching_cells_as_background():
    cells = np.zeros((6, 8), np.int32)
    cells[1:5, 1:4], cells[1:5, 4:7] = 1, 2
    nuclei = np.zeros_like(cells)
    nuclei[2:4, 2] = 1
    cls = three_class(nuclei, cells).argmax(0)
    assert (cls[1:5, 3] == 0).all() and (cls[1:5, 4] == 0).all()  # the shared edge, both sides
    assert (cls[2:4, 2] == 2).all() and cls[1, 1] == 1 and cls[1, 5] == 1
    assert (cls[0] == 0).all()


def test_cell_cores_stand_in_for_nuclei_of_real_hand_drawn_cells():
    cells = tifffile.imread(f"{PHASE}_cells_crop512.tif").astype(np.int32)
    cores = T.cell_cores(cells, 0.5)
    ids = set(np.unique(cells)) - {0}
    core_ids = set(np.unique(cores)) - {0}
    assert core_ids <= ids and len(core_ids) >= len(ids) - 2  # tiny slivers may have no core
    assert ((cores > 0) <= (cells > 0)).all() and (cores[cores > 0] == cells[cores > 0]).all()
    frac = np.count_nonzero(cores) / np.count_nonzero(cells)
    assert 0.05 < frac < 0.5


def test_label_free_augmentation_is_reproducible_and_keeps_labels_aligned(hela):
    img, mask = hela
    s = T.make_sample("hela", img, {"nuclei": mask}, pixel_size_um=0.3, train_pixel_um=0.5)
    aug = T.Augment.label_free()
    a = T.random_crop(s, 128, np.random.default_rng(7), aug, margin=8)
    b = T.random_crop(s, 128, np.random.default_rng(7), aug, margin=8)
    np.testing.assert_array_equal(a[0], b[0])
    geo = T.random_crop(
        s,
        128,
        np.random.default_rng(7),
        T.Augment(
            **{
                **aug.__dict__,
                "gain": (1, 1),
                "offset": (0, 0),
                "gamma": (1, 1),
                "blur_p": 0,
                "noise_p": 0,
                "invert_p": 0,
                "illumination_p": 0,
                "relief_p": 0,
                "halo_p": 0,
            }
        ),
        margin=8,
    )
    assert np.isfinite(a[0]).all() and a[0].shape == (1, 128, 128)
    np.testing.assert_array_equal(a[1]["nuclei"], geo[1]["nuclei"])  # intensity augmentation never moves labels
    # illumination: a smooth field within the drawn amplitude
    f = T._smooth_field(np.random.default_rng(0), (64, 64), 0.4)
    assert 0.6 - 1e-6 <= f.min() and f.max() <= 1.4 + 1e-6 and np.abs(np.diff(f, axis=0)).max() < 0.05


def test_prepare_scripts_refuse_held_out_data():
    sys.path.insert(0, str(Path(__file__).parents[2] / "engines"))
    try:
        import prepare_brifiseg
        import prepare_usiigaci
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit, match="only the training folders"):
        prepare_brifiseg._blob(Path("/nonexistent"), "Dataset/Task001_A549/imagesTs/A549_001_0000.nii.gz")
    with pytest.raises(SystemExit, match="only the training folders"):
        prepare_brifiseg._blob(Path("/nonexistent"), "Dataset/Task011_MCF7/imagesTr/MCF7_001_0000.nii.gz")
    with pytest.raises(SystemExit, match="held out"):
        prepare_usiigaci.convert(Path("/nonexistent"), Path("/nonexistent"), range(40, 50))


def test_estimate_pixel_size_on_real_brightfield_at_real_field_size(hela):
    """A real HeLa field tiled to 2048²: the estimate must not lock onto the texture the network cuts
    into small "nuclei" when it is told the pixels are coarse (the closest fixed point was 0.85 µm)."""
    img, _ = hela
    eng = engine_class("brightfield-unet")(backend="torch")
    est = estimate_pixel_size(eng, [{"brightfield": np.tile(img, (4, 4))}])
    assert est is not None and 0.2 < est.pixel_size_um < 0.35  # the source's as-if size is 0.277 µm
