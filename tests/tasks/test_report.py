"""hts report: heatmaps, dose-response, overlays and one self-contained HTML page from a segmented plate."""

from __future__ import annotations

import base64
import re

import pytest
from conftest import here
from matplotlib.image import imread

from hts.api import segment
from hts.errors import CatalogError
from hts.tasks.report import report


@pytest.fixture
def segmented(annotated_plate):
    p = annotated_plate(wells="A01:C05", fields=1, shape=(128, 128))
    segment(engine="classic", workspace=here())
    return p


def test_report_writes_pictures_and_a_self_contained_page(segmented, tmp_path):
    res = report(
        "DEMO-PLATE",
        values=["cell_count", "Cells_Intensity_NucCytoRatio_GFP"],
        sql="SELECT well, avg(Nuclei_AreaShape_Area) AS nucleus_area FROM cells GROUP BY well",
        fields=["B03"],
        out=tmp_path / "rep",
        workspace=here(),
    )
    names = sorted(p.rsplit("/", 1)[-1] for p in res.images)
    assert names == sorted([
        "heatmap_cell_count.png", "heatmap_Cells_Intensity_NucCytoRatio_GFP.png", "heatmap_nucleus_area.png",
        "heatmap_layout_log10_concentration.png", "dose_cell_count.png", "dose_Cells_Intensity_NucCytoRatio_GFP.png",
        "dose_nucleus_area.png", "overlay_B03_0.png",
    ])  # fmt: skip
    for p in res.images:
        img = imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img[..., :3].std() > 0.05
    page = open(res.html, encoding="utf-8").read()
    assert "DEMO-PLATE" in page and ("Z&#x27;" in page or "Z'" in page)
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(pngs) >= 8 and all(base64.b64decode(x)[:8] == b"\x89PNG\r\n\x1a\n" for x in pngs)
    assert "EC50" in page and "CMPD-00" in page  # the 4PL fit table


def test_report_errors_are_clear(segmented, tmp_path):
    with pytest.raises(CatalogError, match="has no field H12/0"):
        report("DEMO-PLATE", fields=["H12"], out=tmp_path / "x", workspace=here())
    with pytest.raises(CatalogError, match="must return a 'well' column"):
        report("DEMO-PLATE", sql="SELECT 1 AS one", out=tmp_path / "x", workspace=here())
    with pytest.raises(CatalogError, match="no per-well metric 'bogus'"):
        report("DEMO-PLATE", values=["bogus"], out=tmp_path / "x", workspace=here())
    with pytest.raises(CatalogError, match="no segmentation run 'ffff'"):
        report("DEMO-PLATE", run="ffff", out=tmp_path / "x", workspace=here())
