"""Tests of the synthetic field, platemap and plate generators (hts.synth)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from hts.synth import (
    SynthField,
    channel_kind,
    dose_effect,
    dose_of,
    dose_response_layout,
    make_plate,
    synth_field,
    write_platemap_csv,
)
from hts.wells import WellRef

OFFSET = 100  # camera offset of uint16 fields


def _pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different objects that share an edge (4-neighbourhood)."""
    out: set[tuple[int, int]] = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        sel = (a != b) & (a > 0) & (b > 0)
        lo, hi = np.minimum(a[sel], b[sel]), np.maximum(a[sel], b[sel])
        out |= set(zip(lo.tolist(), hi.tolist()))
    return out


# --------------------------------------------------------------------------- synth_field


def test_same_seed_same_field_other_seed_other_field():
    a = synth_field(shape=(192, 160), seed=11)
    b = synth_field(shape=(192, 160), seed=11)
    c = synth_field(shape=(192, 160), seed=12)
    assert isinstance(a, SynthField)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.nuclei, b.nuclei)
    np.testing.assert_array_equal(a.cells, b.cells)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.cells, c.cells)


def test_shapes_dtypes_and_channel_subsets():
    f = synth_field(shape=(100, 140), seed=1)
    assert f.image.shape == (3, 100, 140) and f.image.dtype == np.uint16
    assert f.nuclei.shape == f.cells.shape == (100, 140)
    assert f.nuclei.dtype == f.cells.dtype == np.int32
    assert f.channels == ("DAPI", "GFP", "Brightfield")
    assert f.kinds == ("nuclear", "cytoplasm", "brightfield")

    bf = synth_field(shape=(100, 140), seed=1, channels=("Brightfield",))
    assert bf.image.shape == (1, 100, 140)
    np.testing.assert_array_equal(bf.cells, f.cells)  # geometry depends on the seed only
    np.testing.assert_array_equal(bf.image[0], f.image[2])

    odd = synth_field(shape=(64, 64), seed=1, channels=("Hoechst 33342", "Actin", "Phase", "Mito"), dtype="uint8")
    assert odd.image.shape == (4, 64, 64) and odd.image.dtype == np.uint8
    assert odd.kinds == ("nuclear", "cytoplasm", "brightfield", "cytoplasm")
    fl = synth_field(shape=(64, 64), seed=1, dtype="float32", channels=("DAPI",))
    assert fl.image.dtype == np.float32


def test_channel_kinds_by_name():
    assert [channel_kind(n) for n in ("DAPI", "hoechst", "Hoechst 33342")] == ["nuclear"] * 3
    assert [channel_kind(n) for n in ("GFP", "FITC BP", "Cyto", "Actin", "TRITC")] == ["cytoplasm"] * 5
    assert [channel_kind(n) for n in ("Brightfield", "BF", "Mono", "DIC", "Phase")] == ["brightfield"] * 5
    assert channel_kind("BFP") == "cytoplasm"  # blue fluorescent protein, not brightfield
    assert channel_kind("whatever") == "cytoplasm"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_are_consistent_instances(seed):
    f = synth_field(shape=(256, 256), seed=seed, noise=0)
    n, c = f.nuclei, f.cells
    ids = np.unique(c[c > 0])
    assert len(ids) == f.n_cells > 10
    np.testing.assert_array_equal(ids, np.arange(1, f.n_cells + 1))  # compact ids 1..N
    np.testing.assert_array_equal(np.unique(n[n > 0]), ids)  # every cell has its nucleus in view
    assert np.all(c[n > 0] == n[n > 0])  # nuclei lie inside their own cell
    # every cell and every nucleus is one 4-connected piece
    for lab in (n, c):
        for i, sl in enumerate(ndi.find_objects(lab)):
            assert ndi.label(lab[sl] == i + 1)[1] == 1, f"object {i + 1} is in pieces"
    # cells tile against each other; cytoplasm surrounds nuclei
    assert len(_pairs(c)) >= f.n_cells // 3
    nuc_area = np.bincount(n.ravel())[1:]
    cell_area = np.bincount(c.ravel())[1:]
    assert np.median(cell_area / nuc_area) > 2.0
    # objects are cut by the field's edges, as in real fields
    border = np.concatenate([c[0], c[-1], c[:, 0], c[:, -1]])
    assert np.count_nonzero(np.unique(border)) >= 1


def test_some_nuclei_touch_over_a_few_fields():
    touching = sum(len(_pairs(synth_field(shape=(384, 384), seed=s, noise=0).nuclei)) for s in range(4))
    assert touching >= 2


def test_requested_cell_count_and_density():
    for n in (10, 60):
        f = synth_field(shape=(256, 256), seed=3, n_cells=n)
        assert 0.9 * n <= f.n_cells <= n
    sparse = synth_field(shape=(256, 256), seed=3, density=0.2).n_cells
    dense = synth_field(shape=(256, 256), seed=3, density=0.6).n_cells
    assert dense > 2 * sparse
    # the density-derived count: about density * area / (pi r^2)
    counts = [synth_field(shape=(256, 256), seed=s).n_cells for s in range(4)]
    expected = 0.5 * 256 * 256 / (np.pi * 22.0**2)
    assert 0.7 * expected < np.mean(counts) < 1.3 * expected


def test_nuclear_channel_contrast_and_camera_levels():
    f = synth_field(shape=(256, 256), seed=4)
    dapi = f.image[0].astype(float) - OFFSET
    inside = dapi[f.nuclei > 0].mean()
    bg = dapi[ndi.binary_dilation(f.cells > 0, iterations=6) == 0]
    assert inside > 8 * bg.mean()
    # camera offset ~100 counts, background a few hundred counts, nothing near zero
    assert 90 <= f.image[0].min() and 150 < np.median(bg + OFFSET) < 450
    # cytoplasm channel: brighter in the cytoplasm than in the nucleus at dose 0
    gfp = f.image[1].astype(float)
    cyto = (f.cells > 0) & (f.nuclei == 0)
    assert gfp[cyto].mean() > 1.3 * gfp[f.nuclei > 0].mean()


def test_brightfield_halo():
    f = synth_field(shape=(256, 256), seed=5, illumination=0.0, channels=("Brightfield",))
    bf = f.image[0].astype(float)
    cells = f.cells > 0
    ring = ndi.binary_dilation(cells, iterations=3) & ~cells  # just outside the cells
    far = ~ndi.binary_dilation(cells, iterations=15)
    rim_in = cells & ~ndi.binary_erosion(cells, iterations=3)  # just inside their edge
    background = bf[far].mean()
    assert 9000 < background < 14000  # mid-grey
    assert bf[ring].mean() > 1.02 * background  # bright halo outside
    assert bf[rim_in].mean() < 0.985 * background  # dark rim inside


def test_uneven_illumination():
    flat = synth_field(shape=(256, 256), seed=6, illumination=0.0, channels=("Brightfield",), noise=0)
    vign = synth_field(shape=(256, 256), seed=6, illumination=0.3, channels=("Brightfield",), noise=0)
    ratio = vign.image[0].astype(float) / flat.image[0]
    assert ratio.max() <= 1.0001 and ratio.min() < 0.9


def test_dose_lowers_cytoplasmic_signal_and_moves_it_to_the_nucleus():
    def per_cell(dose: float) -> tuple[float, float, int]:
        means, ratios, count = [], [], 0
        for s in range(3):
            f = synth_field(shape=(256, 256), seed=100 + s, dose=dose, channels=("DAPI", "GFP"))
            g = (f.image[1].astype(float) - OFFSET).ravel()

            def mean(labels: np.ndarray) -> np.ndarray:
                k = f.n_cells + 1
                area = np.bincount(labels.ravel(), minlength=k)[1:]
                return np.bincount(labels.ravel(), weights=g, minlength=k)[1:] / np.maximum(area, 1), area

            cell_mean, _ = mean(f.cells)
            nuc_mean, _ = mean(f.nuclei)
            cyto_mean, cyto_area = mean(np.where(f.nuclei > 0, 0, f.cells))
            means.append(cell_mean)
            ratios.append((nuc_mean / np.maximum(cyto_mean, 1e-9))[cyto_area > 0])
            count += f.n_cells
        return float(np.mean(np.concatenate(means))), float(np.median(np.concatenate(ratios))), count

    m0, r0, n0 = per_cell(0.0)
    m1, r1, n1 = per_cell(1.0)
    assert m1 < 0.85 * m0  # mean GFP per cell drops
    assert r1 > 2 * r0  # nuclear/cytoplasmic ratio rises (translocation)
    assert n1 < n0  # toxicity: fewer cells
    assert dose_effect(0.0) == 0.0 and dose_effect(1.0) == pytest.approx(1.0)
    assert 0.3 < dose_effect(0.5) < 0.7


def test_no_saturation_except_rare_debris():
    sat = [np.mean(synth_field(shape=(256, 256), seed=s).image == 65535) for s in range(5)]
    assert max(sat) < 1e-3


def test_time_and_focus():
    f0 = synth_field(shape=(192, 192), seed=8, noise=0)
    f3 = synth_field(shape=(192, 192), seed=8, noise=0, frame=3)
    assert not np.array_equal(f0.cells, f3.cells)  # cells moved
    assert abs(f0.n_cells - f3.n_cells) <= 3
    overlap = np.mean((f0.nuclei > 0) == (f3.nuclei > 0))
    assert overlap > 0.85  # ... but only a little
    blurred = synth_field(shape=(192, 192), seed=8, noise=0, defocus=1.5)
    np.testing.assert_array_equal(blurred.nuclei, f0.nuclei)

    def sharp(img: np.ndarray) -> float:
        return float(ndi.laplace(img.astype(float)).var())

    assert sharp(blurred.image[0]) < 0.5 * sharp(f0.image[0])


# --------------------------------------------------------------------------- platemap


def test_dose_response_layout_96():
    rows = dose_response_layout(96)
    assert len(rows) == 96
    assert {r["role"] for r in rows} <= {"negative_control", "positive_control", "sample"}
    by_well = {r["well"]: r for r in rows}
    assert set(rows[0]) == {"well", "compound", "concentration", "unit", "role"}
    for letter in "ABCDEFGH":
        neg, pos = by_well[f"{letter}01"], by_well[f"{letter}12"]
        assert (neg["role"], neg["compound"], neg["concentration"]) == ("negative_control", "DMSO", 0.0)
        assert pos["role"] == "positive_control" and pos["concentration"] == 30.0
        series = [by_well[f"{letter}{c:02d}"] for c in range(2, 12)]
        assert all(r["role"] == "sample" and r["unit"] == "uM" for r in series)
        conc = [r["concentration"] for r in series]
        assert conc[0] == 30.0 and all(a > b for a, b in zip(conc, conc[1:]))
        assert conc[1] == pytest.approx(10.0)
        assert len({r["compound"] for r in series}) == 1
        doses = [dose_of(r) for r in series]
        assert all(a >= b for a, b in zip(doses, doses[1:]))
        assert dose_of(neg) == 0.0 and dose_of(pos) == 1.0
    assert {by_well["A02"]["compound"], by_well["B02"]["compound"]} == {"CMPD-001", "CMPD-002"}
    assert 0.0 < dose_of(by_well["A05"]) < 1.0


def test_layout_of_a_well_selection_and_csv(tmp_path):
    rows = dose_response_layout(384, "C05:D08")
    assert [r["well"] for r in rows][:4] == ["C05", "C06", "C07", "C08"]
    assert {r["role"] for r in rows if r["well"].endswith("05")} == {"negative_control"}
    assert {r["role"] for r in rows if r["well"].endswith("08")} == {"positive_control"}
    assert dose_response_layout(96, [WellRef(0, 0)])[0]["role"] == "negative_control"
    path = write_platemap_csv(rows, tmp_path / "pm.csv")
    with open(path, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert list(back[0]) == ["well", "compound", "concentration", "unit", "role"]
    assert [r["well"] for r in back] == [r["well"] for r in rows]
    assert [float(r["concentration"]) for r in back] == pytest.approx([r["concentration"] for r in rows], rel=1e-5)
    assert [dose_of(r) for r in back] == pytest.approx([dose_of(r) for r in rows], rel=1e-4)
    with pytest.raises(ValueError):
        dose_response_layout(96, "A01:A13")


def test_platemap_csv_is_accepted_by_the_catalog_reader(tmp_path):
    platemap = pytest.importorskip("hts.catalog.platemap")
    path = write_platemap_csv(dose_response_layout(96, "A01:H12"), tmp_path / "pm.csv")
    rows = platemap.read_platemap(path, plate_wells=96)
    assert len(rows) == 96 and rows[0]["role"] == "negative_control"


# --------------------------------------------------------------------------- make_plate

SMALL = {"wells": "A01:B03", "fields": 2, "shape": (128, 128), "seed": 3}


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("fmt", "first", "count"),
    [
        ("imagexpress", "DEMO-PLATE_A01_s1_w1.tif", 36),
        ("opera", "r01c01f01p01-ch1sk1fk1fl1.tiff", 36),
        ("cellomics", "DEMO-PLATE_A01f00d0.tif", 36),
    ],
)
def test_make_plate_tiff_formats(tmp_path, fmt, first, count):
    plate = make_plate(tmp_path / "a", format=fmt, masks=True, **SMALL)
    assert plate.source == tmp_path / "a"
    assert [w.name for w in plate.wells] == ["A01", "A02", "A03", "B01", "B02", "B03"]
    images = sorted(p for p in plate.source.glob("*.tif*"))
    assert len(images) == count  # 6 wells x 2 fields x 3 channels
    assert (plate.source / first).is_file()
    img = tifffile.imread(plate.source / first)
    assert img.shape == (128, 128) and img.dtype == np.uint16
    # the pixels are those of the field rendered for that well
    assert plate.dose("A03") == 1.0 and plate.dose("A01") == 0.0

    # platemap beside the images
    with open(plate.platemap, newline="") as fh:
        pm = {r["well"]: r for r in csv.DictReader(fh)}
    assert pm["A01"]["role"] == "negative_control" and pm["B03"]["role"] == "positive_control"

    # ground truth: one nuclei and one cells mask per field, consistent with each other
    assert plate.truth_dir == tmp_path / "a" / "truth"
    assert len(list(plate.truth_dir.glob("*.tif"))) == 2 * 12
    nuc_path, cell_path = plate.truth("B02", 1)
    assert nuc_path.name == "B02_f1_nuclei.tif" and cell_path.name == "B02_f1_cells.tif"
    nuc, cells = tifffile.imread(nuc_path), tifffile.imread(cell_path)
    assert nuc.shape == (128, 128) and nuc.dtype in (np.uint16, np.int32)
    assert nuc.max() > 0 and np.all(cells[nuc > 0] == nuc[nuc > 0])

    # byte-identical on re-run
    make_plate(tmp_path / "b", format=fmt, masks=True, **SMALL)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")

    # and readable by the matching hts reader
    tiff = pytest.importorskip("hts.formats.tiff")
    desc = tiff.detect_tiff_layout(plate.source)(plate.source).describe()
    assert desc.format == fmt
    assert desc.shape == (1, 3, 1, 128, 128) and len(desc.fields) == 12


def test_make_plate_imagexpress_side_files_and_stacks(tmp_path):
    plate = make_plate(tmp_path, format="imagexpress", wells="B02", fields=1, shape=(32, 48), n_z=2, n_time=2,
                       channels=("Hoechst", "Brightfield"), name="P1")  # fmt: skip
    htd = (tmp_path / "P1.HTD").read_text()
    assert '"WaveName1", "Hoechst"' in htd and '"WaveName2", "Brightfield"' in htd
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.tif"))
    assert names[0] == "TimePoint_1/ZStep_1/P1_B02_s1_w1.tif" and len(names) == 8
    desc = tifffile.TiffFile(tmp_path / names[0]).pages[0].description
    assert 'id="spatial-calibration-x" type="float" value="0.65"' in desc
    assert plate.truth_dir is None


def test_make_plate_same_pixels_in_every_format(tmp_path):
    kw = {"wells": "A02", "fields": 1, "shape": (64, 64), "seed": 9}
    a = make_plate(tmp_path / "ix", format="imagexpress", **kw)
    b = make_plate(tmp_path / "cx", format="cellomics", **kw)
    np.testing.assert_array_equal(
        tifffile.imread(a.source / "DEMO-PLATE_A02_s1_w2.tif"), tifffile.imread(b.source / "DEMO-PLATE_A02f00d1.tif")
    )


def test_make_plate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="format"):
        make_plate(tmp_path, format="czi", wells="A01")
    with pytest.raises(ValueError, match="Cellomics"):
        make_plate(tmp_path, format="cellomics", wells="A01", n_z=3)
    with pytest.raises(ValueError, match="not on a 96-well plate"):
        make_plate(tmp_path, format="opera", wells="A13")
    with pytest.raises(ValueError, match="plate_type"):
        make_plate(tmp_path, format="opera", plate_type=100, wells="A01")


def _nd2_writer_available() -> bool:
    try:
        import hts.synth.nd2_writer  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _nd2_writer_available(), reason="hts.synth.nd2_writer is not there yet")
def test_make_plate_nd2(tmp_path):
    nd2 = pytest.importorskip("nd2")
    plate = make_plate(tmp_path / "a", format="nd2", masks=True, **SMALL)
    assert plate.source == tmp_path / "a" / "DEMO-PLATE.nd2" and plate.source.is_file()
    with nd2.ND2File(plate.source) as f:
        assert f.sizes == {"P": 12, "C": 3, "Y": 128, "X": 128}
        assert [c.channel.name for c in f.metadata.channels] == ["DAPI", "GFP", "Brightfield"]
        loop = next(lp for lp in f.experiment if lp.type == "XYPosLoop")
        names = [p.name for p in loop.parameters.points]
        assert names[:4] == ["A01", "A01#2", "A02", "A02#2"] and names[-1] == "B03#2"
        xy = [tuple(p.stagePositionUm[:2]) for p in loop.parameters.points]
        assert xy[2][0] - xy[0][0] == pytest.approx(9000.0)  # 96-well pitch
        assert abs(xy[0][0] - 14380.0) < 500 and abs(xy[0][1] - 11240.0) < 500
        first = f.asarray()
    assert first.shape == (12, 3, 128, 128) and first.dtype == np.uint16

    again = make_plate(tmp_path / "b", format="nd2", **SMALL)
    with nd2.ND2File(again.source) as f:
        np.testing.assert_array_equal(f.asarray(), first)
    # the same pixels as the TIFF layouts write for that field
    tif = make_plate(tmp_path / "c", format="cellomics", **SMALL)
    np.testing.assert_array_equal(tifffile.imread(tif.source / "DEMO-PLATE_B02f01d0.tif"), first[9, 0])
    nuc = tifffile.imread(plate.truth("B02", 1)[0])
    assert first[9, 0][nuc > 0].mean() > 3 * first[9, 0][nuc == 0].mean()


@pytest.mark.skipif(not _nd2_writer_available(), reason="hts.synth.nd2_writer is not there yet")
def test_make_plate_nd2_unnamed_positions_with_z_and_time(tmp_path):
    nd2 = pytest.importorskip("nd2")
    plate = make_plate(tmp_path, format="nd2", wells="A01,C05", fields=1, shape=(64, 64), n_z=3, n_time=2,
                       named_positions=False)  # fmt: skip
    with nd2.ND2File(plate.source) as f:
        assert f.sizes == {"T": 2, "P": 2, "Z": 3, "C": 3, "Y": 64, "X": 64}
        loop = next(lp for lp in f.experiment if lp.type == "XYPosLoop")
        assert all(not p.name for p in loop.parameters.points)
        data = f.asarray()
    dapi = data[0, 0, :, 0].astype(float)
    sharp = [ndi.laplace(z).var() for z in dapi]
    assert sharp[1] > sharp[0] and sharp[1] > sharp[2]  # the middle plane is in focus
