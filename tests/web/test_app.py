"""The browser over real HTTP (uvicorn on a free local port): status codes, one-line JSON errors, downloads,
the token and host checks, and `hts serve` as a user starts it."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import httpx
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from hts.cli.main import app

PLATE = "DEMO-PLATE"
W = f"/api/plates/{PLATE}/wells/B05"


@pytest.fixture(scope="module")
def http(live_server):
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        yield c


def test_pages_and_data(http):
    r = http.get("/")
    assert r.status_code == 200 and "app.js" in r.text
    assert http.get("/static/app.js").status_code == 200
    plates = http.get("/api/plates").json()["plates"]
    assert [p["name"] for p in plates] == [PLATE]
    d = http.get(f"/api/plates/{PLATE}", params={"metric": "cell_count"}).json()
    assert len(d["wells"]) == 96 and d["qc"]["positive"]["wells"] == 8
    tile = http.get(f"{W}/fields/0/tiles/0/0/0.jpg", params={"c": "0,1"})
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/jpeg" and tile.content[:2] == b"\xff\xd8"
    png = http.get(f"{W}/fields/0/labels/nuclei/0/0/0.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "url, status, message",
    [
        ("/api/plates/NOPE", 404, "no plate 'NOPE'"),
        (f"/api/plates/{PLATE}/wells/Q77", 404, "no imaged well"),
        (f"{W}/fields/9", 404, "no field 9"),
        (f"{W}/fields/0/tiles/7/0/0.jpg", 404, "pyramid levels"),
        (f"{W}/fields/0/tiles/0/0/0.jpg?c=x", 400, "comma-separated integers"),
        (f"{W}/fields/0/tiles/0/0/0.jpg?win=1:2", 400, "channel:low:high"),
        (f"{W}/fields/0/labels/secret/0/0/0.png", 404, "no label image 'secret'"),
        (f"{W}/fields/0/cell?x=nan&y=1", 400, "finite"),
        (f"{W}/cells?where=Nope%20%3E%201", 400, "Nope"),
        (f"{W}/cells.xlsx", 404, ".csv or .parquet"),
        ("/api/query?sql=DROP%20TABLE%20cells", 400, "read-only"),
        ("/api/query?sql=SELECT%20*%20FROM%20nowhere", 400, "nowhere"),
        ("/api/query?sql=SELECT%201%3B%20SELECT%202", 400, "one statement"),
        ("/api/query?sql=", 400, "type a query"),
        ("/api/query?sql=SELECT%20*%20FROM%20read_csv('/etc/passwd')", 400, "disabled|Permission"),
    ],
)
def test_bad_requests_are_one_line_json(http, url, status, message):
    import re

    r = http.get(url)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert re.search(message, err) and "\n" not in err and "Traceback" not in err


def test_path_traversal_never_reaches_the_file_system(http):
    for url in (
        f"{W}/fields/0/labels/..%2F..%2F..%2Fzarr.json/0/0/0.png",
        "/api/plates/..%2F..%2Fetc/wells/B05",
        "/static/..%2F..%2Fapp.py",
        "/static/../app.py",
    ):
        r = http.get(url)
        assert r.status_code == 404, url
        assert b"import" not in r.content


def test_cells_downloads_hold_the_selection(http, browse_ws):
    where = "Nuclei_AreaShape_Area > 100"
    n = http.get(f"{W}/cells", params={"where": where, "limit": 2}).json()
    assert len(n["rows"]) == 2 and n["total"] > 2
    csv = http.get(f"{W}/cells.csv", params={"where": where})
    assert csv.headers["content-disposition"].startswith("attachment")
    table = pcsv.read_csv(io.BytesIO(csv.content))
    assert table.num_rows == n["total"] and min(table.column("Nuclei_AreaShape_Area").to_pylist()) > 100
    parquet = pq.read_table(io.BytesIO(http.get(f"{W}/cells.parquet", params={"where": where}).content))
    assert parquet.num_rows == n["total"] and parquet.column_names == table.column_names


def test_query_get_post_and_download(http):
    sql = "SELECT well, cell_count FROM well_stats ORDER BY well"
    got = http.post("/api/query", data={"sql": sql, "limit": "10"}).json()
    assert got["columns"] == ["well", "cell_count"] and len(got["rows"]) == 10 and got["rows"][0][0] == "A01"
    full = pcsv.read_csv(io.BytesIO(http.get("/api/query.csv", params={"sql": sql}).content))
    assert full.num_rows == 96
    presets = http.get("/api/presets").json()["presets"]
    assert {"cell-count", "qc"} <= {p["name"] for p in presets} and all(p["sql"] for p in presets)


def test_host_check_and_token(browse_ws):
    from live import LiveServer

    server = LiveServer(browse_ws, token="t" * 24)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert c.get("/api/plates").status_code == 403
            assert c.get("/api/plates", params={"token": "wrong" * 5}).status_code == 403
            r = c.get("/", params={"token": "t" * 24})
            assert (
                r.status_code == 200
                and "hts_token" in r.headers["set-cookie"]
                and "HttpOnly" in r.headers["set-cookie"]
            )
            assert c.get("/api/plates").status_code == 200  # the cookie carries it from now on
        with httpx.Client(base_url=server.url, timeout=10, headers={"Authorization": "Bearer " + "t" * 24}) as c:
            assert c.get("/api/plates").status_code == 200
        # a page elsewhere that rebinds its own name to 127.0.0.1 is refused by the host check
        with httpx.Client(base_url=server.url, timeout=10, headers={"Host": "evil.example"}) as c:
            assert c.get("/api/plates", params={"token": "t" * 24}).status_code == 400
    finally:
        server.stop()


def test_serve_port_in_use_is_one_line(live_server):
    r = CliRunner().invoke(app, ["serve", "--port", str(live_server.port)])
    assert r.exit_code == 1
    out = " ".join(r.output.split())
    assert f"port {live_server.port} on 127.0.0.1 is in use" in out and "Traceback" not in r.output


def test_serve_short_token_refused():
    r = CliRunner().invoke(app, ["serve", "--token", "abc", "--port", "0"])
    assert r.exit_code == 1 and "at least 16 characters" in r.output


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_hts_serve_as_a_user_starts_it(browse_ws, host):
    """`hts serve` in a workspace folder prints the URL; on every interface it needs the printed token."""
    from live import free_port

    port = free_port()
    env = dict(os.environ, HTS_DB=str(browse_ws.db), HTS_PLATES_DIR=str(browse_ws.plates_dir))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hts.cli.main", "serve", "--host", host, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/plates", timeout=5)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        if host == "0.0.0.0":
            assert "?token=" in line and r.status_code == 403
            token = line.split("?token=")[1].split()[0]
            r = httpx.get(f"http://127.0.0.1:{port}/api/plates", params={"token": token}, timeout=5)
        else:
            assert "token" not in line
        assert r.status_code == 200 and r.json()["plates"][0]["name"] == PLATE
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=20)[0]
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest


def test_serve_without_a_catalog_says_so(tmp_path):
    from live import LiveServer

    from hts.config import Workspace

    server = LiveServer(Workspace.at(tmp_path / "empty"))
    try:
        assert httpx.get(server.url + "/api/plates").json()["plates"] == []
        r = httpx.get(server.url + "/api/plates/X")
        assert r.status_code == 404 and "no catalog here" in r.json()["error"]
    finally:
        server.stop()
    assert not (tmp_path / "empty").exists()  # a reader creates nothing
