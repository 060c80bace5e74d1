import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib._pylab_helpers import Gcf
from matplotlib.colors import Normalize, to_rgb
from skimage.segmentation import find_boundaries

import hts
from hts.compute.analysis.doseresponse import fit_4pl, logistic4
from hts.reports import HtmlReport, contact_sheet, dose_response_plot, plate_heatmap, segmentation_overlay
from hts.reports._render import read_png
from hts.reports.heatmap import DPI, FLAG_COLOR, _cell_center_px
from hts.reports.overlay import _overlay_layout
from hts.wells import PLATE_TYPES, WellRef

NUCLEI_GT = Path(__file__).parents[1] / "data" / "nuclei_gt"


def _patch(img, y, x, r=3):
    """Median colour of a small square around (y, x)."""
    return np.median(img[y - r : y + r + 1, x - r : x + r + 1, :3].reshape(-1, 3), axis=0)


def _all_wells(n, fn):
    pt = PLATE_TYPES[n]
    return {WellRef(r, c).name: fn(r, c) for r in range(pt.rows) for c in range(pt.columns)}


# ------------------------------------------------------------------ heatmaps
def test_heatmap_96_cell_colours():
    # Every well empty but B03 (a known value at known limits): B03 shows the colour map's
    # colour for it, an empty well does not.
    png = plate_heatmap({"B03": 7.5}, plate_type=96, vmin=0, vmax=10, label="count", annotate=False)
    img = read_png(png)
    assert img.shape[1] > img.shape[0] > 400  # landscape, like the plate (12 x 8 wells)
    y, x = _cell_center_px("B03", 96, title=False, legend_lines=1)
    expect = np.asarray(colormaps["viridis"](Normalize(0, 10)(7.5))[:3])
    assert np.abs(_patch(img, y, x) - expect).max() < 0.02
    y2, x2 = _cell_center_px("E07", 96, title=False, legend_lines=1)
    empty = _patch(img, y2, x2)
    assert np.abs(empty - expect).max() > 0.2
    assert abs(empty[0] - empty[1]) < 0.05 and abs(empty[1] - empty[2]) < 0.05  # greyish
    assert empty.mean() > 0.75  # light


def test_heatmap_robust_limits_ignore_one_outlier():
    values = _all_wells(96, lambda r, c: float(c))
    values["A01"] = 1e6
    img = read_png(plate_heatmap(values, plate_type=96, annotate=False))
    # with min/max limits, columns 1..12 would all get the bottom colour; here they spread
    left = _patch(img, *_cell_center_px("D01", 96, title=False, legend_lines=0))
    right = _patch(img, *_cell_center_px("D12", 96, title=False, legend_lines=0))
    assert np.abs(left - right).max() > 0.3


@pytest.mark.parametrize("n", [384, 1536])
def test_heatmap_large_plates_render(n):
    pt = PLATE_TYPES[n]
    values = _all_wells(n, lambda r, c: r - c / 2)
    values[WellRef(pt.rows - 1, pt.columns - 1).name] = float("nan")
    flags = {"A01": "edge", WellRef(3, 5).name: "saturated"}
    png = plate_heatmap(values, plate_type=n, title=f"{n} wells", label="z", flags=flags, diverging=True)
    img = read_png(png)
    assert img.shape[1] > img.shape[0]
    # flagged wells carry a red outline near their cell border
    for well in flags:
        y, x = _cell_center_px(well, n, title=True, legend_lines=1 + 2)
        half = int((0.19 if n == 1536 else 0.3) * DPI / 2)
        box = img[y - half : y + half + 1, x - half : x + half + 1, :3]
        red = np.all(np.abs(box - np.asarray(to_rgb(FLAG_COLOR))) < 0.08, axis=-1)
        assert red.sum() > 8, well


def test_heatmap_rejects_bad_wells():
    with pytest.raises(ValueError, match="not on a 96-well plate"):
        plate_heatmap({"I01": 1.0}, plate_type=96)
    with pytest.raises(ValueError, match="not a well name"):
        plate_heatmap({"XY1": 1.0}, plate_type=96)
    with pytest.raises(ValueError, match="unknown plate type"):
        plate_heatmap({}, plate_type=100)


def test_heatmap_flat_and_empty_plates():
    assert read_png(plate_heatmap({}, plate_type=96)).ndim == 3
    assert read_png(plate_heatmap(_all_wells(384, lambda r, c: 3.0), plate_type=384)).ndim == 3


# ------------------------------------------------------------------ overlays
def _blobs(shape=(64, 80)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx, r) in enumerate([(15, 20, 8), (40, 50, 10), (45, 18, 6), (20, 44, 7)], start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    rng = np.random.default_rng(0)
    img = (labels > 0) * 200.0 + rng.normal(50, 10, shape)
    return img, labels


def test_overlay_outlines_exact():
    img, labels = _blobs()
    png = segmentation_overlay({"DAPI": img}, {"nuclei": labels}, colors={"nuclei": "#ff00ff"}, title="t")
    out = read_png(png)
    h, w = labels.shape
    width, height, top, left = _overlay_layout(h, w, title=True, entries=2)
    assert out.shape[:2] == (height, width)
    field = out[top : top + h, left : left + w, :3]
    edges = find_boundaries(labels, mode="inner")
    magenta = np.all(np.abs(field - np.array([1.0, 0.0, 1.0])) < 1e-6, axis=-1)
    np.testing.assert_array_equal(magenta, edges)
    # one channel is grey
    inside = field[~edges]
    assert np.abs(inside[:, 0] - inside[:, 1]).max() < 1e-6


def test_overlay_composite_and_downsampling():
    img, labels = _blobs((300, 260))
    chans = {"DAPI": img, "FITC": img[::-1], "TRITC": np.zeros_like(img)}
    out = read_png(segmentation_overlay(chans, {"nuclei": labels, "cells": labels}, pixel_size_um=0.65, max_size=128))
    width, height, top, left = _overlay_layout(100, 87, title=False, entries=3 + 2 + 1)  # 1/3 scale
    assert out.shape[:2] == (height, width)
    field = out[top : top + 100, left : left + 87, :3]
    assert field[..., 2].max() > 0.5 and field[..., 1].max() > 0.5  # blue and green channels present
    yellow = np.all(np.abs(field - np.array([1.0, 1.0, 0.0])) < 1e-6, axis=-1)
    assert yellow.sum() > 20  # cells outlines, drawn after the nuclei outlines
    with pytest.raises(ValueError, match="shape"):
        segmentation_overlay({"a": img}, {"b": labels[:10]})


def test_overlay_on_real_nuclei_and_contact_sheet():
    tifffile = pytest.importorskip("tifffile")
    img = tifffile.imread(NUCLEI_GT / "dsb2018_img2d.tif")
    mask = tifffile.imread(NUCLEI_GT / "dsb2018_mask2d.tif")
    png = segmentation_overlay({"DAPI": img}, {"nuclei": mask}, pixel_size_um=0.5)
    out = read_png(png)
    assert out.shape[0] >= 512 and out.shape[1] > 512
    sheet = read_png(contact_sheet([("a", png), ("b", png), ("c", png)], columns=2, tile_px=200))
    assert sheet.shape[1] > sheet.shape[0] > 200


# ------------------------------------------------------------------ dose-response
@pytest.mark.parametrize("true", [(10.0, 90.0, 0.5, 1.2), (5.0, 100.0, 3.0, -2.0), (0.0, 1.0, 0.1, -1.5)])
@pytest.mark.parametrize("seed", [7, 8])
def test_fit_4pl_recovers_parameters(true, seed):
    # 10 concentrations over 5 decades in triplicate, 2% noise (plus 3 vehicle wells)
    bottom, top, ec50, hill = true
    rng = np.random.default_rng(seed)
    c = np.repeat(np.r_[0.0, np.logspace(-3, 2, 10)], 3)
    y = logistic4(c, *true) + rng.normal(0, 0.02 * (top - bottom), c.size)
    fit = fit_4pl(c, y)
    # the least-squares optimum: no worse than the true curve
    m = c > 0
    ss = ((y[m] - logistic4(c[m], fit["bottom"], fit["top"], fit["ec50"], fit["hill"])) ** 2).sum()
    assert ss <= ((y[m] - logistic4(c[m], *true)) ** 2).sum()
    assert fit["ok"], fit["reason"]
    assert fit["n"] == 30 and fit["n_zero"] == 3
    assert abs(fit["ec50"] / ec50 - 1) < 0.1
    assert abs(fit["hill"] - hill) < 0.2 * abs(hill)
    assert abs(fit["top"] - top) < 0.05 * (top - bottom)
    assert abs(fit["bottom"] - bottom) < 0.05 * (top - bottom)
    assert fit["r2"] > 0.95


def test_fit_4pl_names_plateaus_top_above_bottom():
    c = np.logspace(-2, 2, 9)
    fit = fit_4pl(c, logistic4(c, bottom=100.0, top=5.0, ec50=1.0, hill=2.0))  # the same curve as 5..100, hill -2
    assert fit["ok"]
    np.testing.assert_allclose([fit["bottom"], fit["top"], fit["ec50"], fit["hill"]], [5, 100, 1, -2], rtol=1e-4)


def test_fit_4pl_fails_softly():
    c = np.repeat(np.logspace(-2, 2, 8), 2)
    flat = fit_4pl(c, np.full(c.size, 3.0))
    assert not flat["ok"] and "flat" in flat["reason"] and np.isnan(flat["ec50"])
    noise = fit_4pl(c, np.random.default_rng(1).normal(size=c.size))
    assert not noise["ok"] and noise["reason"]
    few = fit_4pl([0, 1, 2], [1, 2, 3])
    assert not few["ok"] and "at least" in few["reason"]
    assert not fit_4pl([np.nan] * 6, [1.0] * 6)["ok"]
    with pytest.raises(ValueError):
        fit_4pl([1, 2], [1])


def test_dose_response_plot_inputs():
    c = np.r_[0.0, np.logspace(-2, 2, 9)]
    rows = [
        {"compound": "X", "concentration": ci, "value": float(logistic4(ci, 0, 100, 1.0, -1)), "well": "A01"}
        for ci in c
    ]
    rows += [{"compound": "flat", "concentration": ci, "value": 50.0} for ci in c]
    img = read_png(dose_response_plot(rows, ylabel="viability (%)", title="t"))
    assert img.shape[1] > img.shape[0]
    img2 = read_png(dose_response_plot({"X": (c[1:], logistic4(c[1:], 0, 1, 1.0, 1))}, unit="nM"))
    assert img2.ndim == 3
    with pytest.raises(ValueError, match="lacks"):
        dose_response_plot([{"compound": "X", "value": 1.0}])


# ------------------------------------------------------------------ HTML
def test_html_report_is_self_contained(tmp_path):
    png = plate_heatmap({"A01": 1.0}, plate_type=96)
    report = HtmlReport("Plate <P001> & co", generated=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    report.heading("Summary").text("Wells with <b>no</b> value:\n\nsee below.")
    report.heading("Counts", level=3).table(
        ["well", "nuclei", "note"],
        [["A01", 120, "<script>alert(1)</script>"], ["A02", 98.765432, None], ["A03", float("nan"), "ok"]],
        caption="Per well",
    )
    report.table(["i"], [[i] for i in range(10)], max_rows=4)
    report.image(png, caption="heatmap", width=600)
    page = report.render()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Plate &lt;P001&gt; &amp; co" in page and "&lt;b&gt;no&lt;/b&gt;" in page
    assert '<td class="num">98.77</td>' in page and '<td class="num">120</td>' in page and "NaN" in page
    assert "6 more rows not shown (10 in all)" in page
    assert page.count("data:image/png;base64,") == 1
    assert re.search(r'<a href="#s1">Summary</a>', page) and re.search(r'<h3 id="s2">Counts</h3>', page)
    assert "2025-01-02T03:04:05+00:00" in page and f"hts {hts.__version__}" in page
    out = report.write(tmp_path / "r.html")
    assert out.read_text(encoding="utf-8") == page
    with pytest.raises(ValueError):
        report.image(b"GIF89a")
    with pytest.raises(ValueError, match="row 0"):
        report.table(["a", "b"], [[1]])


def test_no_figures_leak():
    plate_heatmap({"A01": 1.0}, plate_type=96)
    img, labels = _blobs()
    segmentation_overlay({"DAPI": img}, {"nuclei": labels})
    dose_response_plot({"X": (np.logspace(-2, 2, 6), np.arange(6.0))})
    assert Gcf.get_num_fig_managers() == 0
