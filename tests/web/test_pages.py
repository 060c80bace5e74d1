"""The plate browser in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
what a user does, asserted on what the page shows. Screenshots go to $HTS_SCREENSHOTS (docs/img/serve when
`make screenshots` runs) or the test's temporary folder.

Without a browser these tests skip, saying which binary is missing; .ci/run installs both.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import httpx
import pyarrow.csv as pcsv
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason=f"no {'chromium' if not CHROMIUM else 'chromedriver'} on PATH (apt-get install chromium chromium-driver)",
)

PLATE = "DEMO-PLATE"
GFP_RATIO = "Cells_Intensity_NucCytoRatio_GFP_median"


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("HTS_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000", "--lang=en"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(browser, condition, timeout=30):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the pages re-render parts of themselves: an element found a moment ago may be replaced; look again
    waiter = WebDriverWait(browser, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    return waiter.until(lambda d: condition(d))


def css(browser, selector):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def text(browser, selector) -> str:
    found = css(browser, selector)
    return found[0].text if found else ""


def canvas_pixels(browser, rgb: tuple[int, int, int]) -> int:
    """How many pixels of the field viewer's canvas have exactly colour ``rgb``."""
    return browser.execute_script(
        """
        const c = document.getElementById('viewer'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] === arguments[0] && d[i+1] === arguments[1] && d[i+2] === arguments[2]) n++;
        return n;
        """,
        *rgb,
    )


def test_plate_well_field_cells_in_chromium(browser, live_server, browse_ws, shots):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    # plates page -> the plate
    browser.get(live_server.url + "/#/")
    wait(browser, lambda d: css(d, "#plates-table a"))
    n_cells = browse_ws.catalog.query("SELECT count(*) AS n FROM cells")[0]["n"]
    row = text(browser, "#plates-table tbody tr")
    assert row.startswith(f"{PLATE} 96 96 96/96 {n_cells} 1 ")
    browser.save_screenshot(str(shots / "plates.png"))
    css(browser, "#plates-table a")[0].click()

    # plate page: 96 wells drawn; change the metric; the QC box follows it
    wait(browser, lambda d: len(css(d, "#heatmap rect.well")) == 96)
    assert "QC of cell_count" in text(browser, "#qc")
    box = css(browser, "#metric")[0]
    box.clear()
    box.send_keys(GFP_RATIO, Keys.ENTER)
    wait(browser, lambda d: css(d, f'#heatmap svg[data-metric="{GFP_RATIO}"]'))
    wait(browser, lambda d: "Z′" in text(d, "#qc") and GFP_RATIO in text(d, "#qc"))
    z = float(text(browser, "#zprime").split()[-1])
    stats = httpx.get(f"{live_server.url}/api/plates/{PLATE}", params={"metric": GFP_RATIO}).json()
    assert z == pytest.approx(stats["qc"]["z_prime"], abs=1e-3) and z > 0.5
    values = {w["well"]: w["value"] for w in stats["wells"]}
    shown = {
        e.get_attribute("data-well"): float(e.get_attribute("data-value")) for e in css(browser, "#heatmap rect.well")
    }
    assert shown == pytest.approx(values)
    # hover shows the well, its compound and value
    b05 = css(browser, '#heatmap rect[data-well="B05"]')[0]
    ActionChains(browser).move_to_element(b05).perform()
    wait(browser, lambda d: "B05" in text(d, "#tooltip"))
    tip = text(browser, "#tooltip")
    assert "sample" in tip and "uM" in tip and GFP_RATIO in tip
    browser.save_screenshot(str(shots / "plate.png"))
    ActionChains(browser).move_by_offset(0, 400).perform()

    # colour by platemap role
    from selenium.webdriver.support.ui import Select

    Select(css(browser, "#color-by")[0]).select_by_value("role")
    wait(
        browser,
        lambda d: css(d, '#heatmap rect[data-well="A01"]') and css(d, "#color-by")[0].get_attribute("value") == "role",
    )
    wait(browser, lambda d: css(d, '#heatmap rect[data-well="A01"]')[0].get_attribute("fill") == "#2166ac")
    assert css(browser, '#heatmap rect[data-well="A12"]')[0].get_attribute("fill") == "#b2182b"
    browser.save_screenshot(str(shots / "plate-roles.png"))
    Select(css(browser, "#color-by")[0]).select_by_value("metric")
    wait(
        browser,
        lambda d: (
            css(d, '#heatmap rect[data-well="B05"]') and css(d, "#color-by")[0].get_attribute("value") == "metric"
        ),
    )

    # click a well: its fields, numbers, dose-response with this well highlighted
    css(browser, '#heatmap rect[data-well="B05"]')[0].click()
    wait(browser, lambda d: "Well B05" in text(d, "#well-title"))
    wait(
        browser,
        lambda d: d.execute_script(
            "const i = document.querySelector('.thumb img'); return i && i.complete && i.naturalWidth > 0"
        ),
    )
    assert len(css(browser, "#dose circle.this-well")) == 1 and "EC50" in text(browser, "#dose-fit")
    n_b05 = browse_ws.catalog.query("SELECT count(*) AS n FROM cells WHERE well = 'B05'")[0]["n"]
    wait(browser, lambda d: f"{n_b05} cells match" in text(d, "#cells-count"))

    # filter the cells with SQL; the count and the CSV link follow the filter
    where = css(browser, "#cells-where")[0]
    where.send_keys("Nuclei_AreaShape_Area > 100", Keys.ENTER)
    n = browse_ws.catalog.query("SELECT count(*) AS n FROM cells WHERE well = 'B05' AND Nuclei_AreaShape_Area > 100")[
        0
    ]["n"]
    wait(browser, lambda d: text(d, "#cells-count").startswith(f"{n} cells match"))
    assert len(css(browser, "#cells-table tbody tr")) == n
    browser.save_screenshot(str(shots / "well.png"))
    csv = httpx.get(css(browser, "#cells-csv")[0].get_attribute("href"))
    assert pcsv.read_csv(io.BytesIO(csv.content)).num_rows == n
    # a bad filter is one line on the page
    where.clear()
    where.send_keys("Nope > 1", Keys.ENTER)
    wait(browser, lambda d: css(d, "#error")[0].is_displayed() and "Nope" in text(d, "#error"))
    assert "\n" not in text(browser, "#error")
    where.clear()
    where.send_keys("Nuclei_AreaShape_Area > 100", Keys.ENTER)
    wait(browser, lambda d: not css(d, "#error")[0].is_displayed() and text(d, "#cells-count").startswith(f"{n} cells"))

    # click a cell row: the field viewer opens centred on it and shows its features
    row = css(browser, "#cells-table tbody tr")[0]
    object_id = row.find_elements("css selector", "td")[1].text
    row.click()
    wait(
        browser, lambda d: css(d, "#viewer") and int(css(d, "#viewer")[0].get_attribute("data-tiles-loaded") or 0) >= 3
    )
    wait(
        browser,
        lambda d: css(d, "#cell-title") and css(d, "#cell-title")[0].get_attribute("data-object-id") == object_id,
    )
    assert "Nuclei_AreaShape_Area" in text(browser, "#cell-table")
    browser.save_screenshot(str(shots / "field.png"))

    # outlines: nuclei cyan, cells yellow; unticking nuclei takes every cyan pixel off the canvas
    cyan = canvas_pixels(browser, (0, 255, 255))
    assert cyan > 200
    css(browser, 'input[data-label="nuclei"]')[0].click()
    wait(browser, lambda d: canvas_pixels(d, (0, 255, 255)) < cyan / 20)
    css(browser, 'input[data-label="nuclei"]')[0].click()
    wait(browser, lambda d: canvas_pixels(d, (0, 255, 255)) > cyan / 2)
    # channels: GFP off leaves no green-dominated pixels
    green = browser.execute_script(
        "const c = document.getElementById('viewer'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i+1] > 80 && d[i] < 30 && d[i+2] < 30) n++; return n;"
    )
    css(browser, 'input[data-channel="1"]')[0].click()
    wait(
        browser,
        lambda d: (
            d.execute_script(
                "const c = document.getElementById('viewer'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                "let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i+1] > 80 && d[i] < 30 && d[i+2] < 30) n++; return n;"
            )
            < green / 20
        ),
    )
    # click on the canvas centre: the cell there (the one the viewer centred on) is shown
    canvas = css(browser, "#viewer")[0]
    ActionChains(browser).move_to_element(canvas).click().perform()
    wait(browser, lambda d: css(d, "#cell-title") or "background" in text(d, "#cell-panel"))


def test_query_page_in_chromium(browser, live_server, shots):
    from selenium.webdriver.support.ui import Select

    browser.get(live_server.url + "/#/query")
    wait(browser, lambda d: css(d, "#preset option[value='cell-count']"))
    Select(css(browser, "#preset")[0]).select_by_value("cell-count")
    css(browser, "#query-run")[0].click()
    wait(browser, lambda d: css(d, "#query-table tbody tr"))
    assert "rows" in text(browser, "#query-meta")
    browser.save_screenshot(str(shots / "query.png"))
    sql = css(browser, "#sql")[0]
    sql.clear()
    sql.send_keys("COPY cells TO '/tmp/x.csv'")
    css(browser, "#query-run")[0].click()
    wait(browser, lambda d: css(d, "#error")[0].is_displayed() and "read-only" in text(d, "#error"))
    assert not Path("/tmp/x.csv").exists() or Path("/tmp/x.csv").stat().st_mtime < 0


def test_unknown_plate_page_in_chromium(browser, live_server):
    browser.get(live_server.url + "/#/plate/NOPE")
    wait(browser, lambda d: css(d, "#error")[0].is_displayed())
    assert "no plate 'NOPE'" in text(browser, "#error")


def test_live_progress_in_chromium(browser, copied_ws, shots):
    """The plate page of a plate being segmented in another process shows the run and redraws as fields finish."""
    import subprocess
    import sys
    import time

    from live import LiveServer

    server = LiveServer(copied_ws)
    cmd = [sys.executable, "-m", "hts.cli.main", "segment", "--engine", "classic", "-p", "smoothing_um=1.3"]
    cmd += ["--label-suffix", "b", "--db", str(copied_ws.db)]
    env = dict(os.environ, HTS_SCHEDULER="sync", HTS_PLATES_DIR=str(copied_ws.plates_dir))
    try:
        browser.get(server.url + f"/#/plate/{PLATE}")
        wait(browser, lambda d: len(css(d, "#heatmap rect.well")) == 96)
        # the page was opened on a finished plate; its polling picks up a run started afterwards
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait(browser, lambda d: css(d, '#runs .run[data-state="running"]'), timeout=60)
        seen = set()
        while proc.poll() is None:
            seen.add(css(browser, "#runs")[0].get_attribute("data-version"))
            time.sleep(0.2)
        assert proc.wait(timeout=120) == 0, proc.stdout.read()
        wait(browser, lambda d: len(css(d, '#runs .run[data-state="complete"]')) == 2, timeout=30)
        seen.add(css(browser, "#runs")[0].get_attribute("data-version"))
        assert len(seen) >= 2  # the page saw the run move: running at least once, then complete
        browser.save_screenshot(str(shots / "plate-live.png"))
    finally:
        server.stop()


@pytest.mark.parametrize("plate, n_rows, n_cols, n_wells", [("P384", 16, 24, 308), ("P1536", 32, 48, 36)])
def test_384_and_1536_plates_render(browser, formats_ws, shots, plate, n_rows, n_cols, n_wells):
    """Every position of the plate is drawn, imaged wells where they are: a skipped outer ring stays empty."""
    from live import LiveServer

    server = LiveServer(formats_ws)
    try:
        browser.get(server.url + f"/#/plate/{plate}")
        wait(browser, lambda d: len(css(d, "#heatmap rect.well")) == n_wells)
        geo = browser.execute_script(
            "const r = [...document.querySelectorAll('#heatmap rect')];"
            "const w = r.filter(e => e.classList.contains('well'));"
            "const box = e => [e.getAttribute('data-well'), +e.getAttribute('x'), +e.getAttribute('y')];"
            "return {all: r.length, wells: w.map(box)};"
        )
        assert geo["all"] == n_rows * n_cols + n_wells  # the plate's positions, then the imaged wells on top
        xs = sorted({x for _, x, _ in geo["wells"]})
        ys = sorted({y for _, _, y in geo["wells"]})
        first = min(geo["wells"], key=lambda w: (w[2], w[1]))
        assert first[0] == ("B02" if plate == "P384" else "AC40")
        assert len(xs) == (22 if plate == "P384" else 9) and len(ys) == (14 if plate == "P384" else 4)
        assert "not segmented yet" in text(browser, "#heatmap") and "No segmentation run yet" in text(browser, "#runs")
        browser.save_screenshot(str(shots / f"plate-{plate[1:]}.png"))
    finally:
        server.stop()


def test_activity_panel_in_chromium(browser, copied_ws, shots):
    """The plate page shows the run's phenotypic activity; a hit opens its well."""
    from live import LiveServer

    import hts

    hts.profile(workspace=copied_ws)
    act = hts.activity(copied_ws, null_size=1000)
    server = LiveServer(copied_ws)
    try:
        browser.get(server.url + f"/#/plate/{PLATE}")
        wait(browser, lambda d: css(d, "#activity-table tbody tr"))
        assert f"{act.n_hits} of {len(act.treatments)} treatments active" in text(browser, "#activity-hits")
        hits = css(browser, '#activity-table tr[data-hit="true"]')
        assert len(hits) == min(act.n_hits, 15)
        browser.save_screenshot(str(shots / "plate-activity.png"))
        compound = hits[0].get_attribute("data-compound")
        hits[0].click()
        wait(browser, lambda d: css(d, "#well-title") and compound in text(d, "#well-title"))
    finally:
        server.stop()
