"""The command line: help that teaches, JSON output, one-line errors with non-zero exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CELLOMICS, ND2_MULTI
from typer.testing import CliRunner

from hts import __version__
from hts.cli.common import os_error_line
from hts.cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_lists_commands_with_purposes():
    r = run("--help")
    assert r.exit_code == 0, r.output
    for cmd in ("ingest", "info", "plates", "annotate", "demo"):
        assert cmd in r.output
    assert "Ingest a plate" in r.output
    r = run("ingest", "--help")
    assert "--pattern" in r.output and "{well}" in r.output and "--max-project" in r.output


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output


def test_ingest_info_annotate_json(tmp_path):
    r = run("ingest", str(ND2_MULTI), "--json", "--tile", "128")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["status"] == "ingested" and rep["channels"] == ["Mono", "DAPI", "FITC BP", "TRITC BP"]
    r = run("ingest", str(ND2_MULTI), "--json", "--tile", "128")
    assert json.loads(r.output)["status"] == "unchanged"

    r = run("info", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["plate"]["name"] == "example-multichannel" and info["fields_complete"] == 1
    assert [c["name"] for c in info["channels"]][1] == "DAPI"

    pm = tmp_path / "layout.csv"
    pm.write_text("well,compound,concentration,unit,role\nA01,DMSO,0,uM,negative_control\n")
    r = run("annotate", "example-multichannel", "--platemap", str(pm), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["wells_annotated"] == 1
    info = json.loads(run("info", "example-multichannel", "--json").output)
    assert info["wells"][0]["compound"] == "DMSO" and info["wells"][0]["role"] == "negative_control"

    r = run("plates", "--json")
    assert [p["name"] for p in json.loads(r.output)] == ["example-multichannel"]


def test_info_renders_a_plate_grid():
    assert run("ingest", str(CELLOMICS)).exit_code == 0
    r = run("info", "AS_09125_050116030001")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    row_d = next(line for line in lines if line.strip().startswith("D "))
    assert "1" in row_d  # well D03 has one field
    assert "d0" in r.output and "cellomics" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["ingest", "nope.nd2"], "no such file"),
        (["info", "missing-plate"], "no plates in the catalog"),
        (["annotate", "x", "--platemap", "layout.csv"], "no plates in the catalog"),
        (["ingest", str(ND2_MULTI), "--tile", "8"], "tile size 8 is out of range"),
        (["ingest", str(CELLOMICS), "--format", "opera"], "no"),
        (["ingest", str(ND2_MULTI), "--out", "/proc/hts-test.zarr"], "/proc/hts-test.zarr: No such file or directory"),
    ],
)
def test_errors_are_one_line_without_traceback(args, message):
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output
    out = r.output.strip()
    assert out.startswith("error:") and message in out
    assert "Traceback" not in out and len(out.splitlines()) <= 2  # one logical line (may wrap)


@pytest.mark.parametrize(
    "error, line",
    [
        (FileNotFoundError(2, "No such file or directory", "/data/x.zarr"), "/data/x.zarr: No such file or directory"),
        (OSError(18, "Invalid cross-device link", "/a", None, "/b"), "/a -> /b: Invalid cross-device link"),
        (
            ConnectionError("Cannot connect to host s3.example:443\nmore detail"),
            "Cannot connect to host s3.example:443",
        ),
        (TimeoutError(), "TimeoutError"),  # fsspec's FSTimeoutError carries no message
    ],
)
def test_os_errors_are_one_line_naming_what_failed(error, line):
    assert os_error_line(error) == line


def test_hts_debug_shows_the_traceback(monkeypatch):
    r = runner.invoke(app, ["ingest", str(ND2_MULTI), "--out", "/proc/hts-test.zarr"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    monkeypatch.setenv("HTS_DEBUG", "1")
    r = runner.invoke(app, ["ingest", str(ND2_MULTI), "--out", "/proc/hts-test.zarr"])
    assert isinstance(r.exception, FileNotFoundError)  # raised through, for a bug report


def test_bad_platemap_row_names_the_line(tmp_path):
    assert run("ingest", str(ND2_MULTI)).exit_code == 0
    pm = tmp_path / "layout.csv"
    pm.write_text("well,role,concentration\nA01,sample,1\nA01,sample,2\n")
    r = runner.invoke(app, ["annotate", "example-multichannel", "--platemap", str(pm)])
    assert r.exit_code == 1
    assert "line 3: well A01 is already described on line 2" in r.output
    pm.write_text("well,role\nB07,sample\n")
    r = runner.invoke(app, ["annotate", "example-multichannel", "--platemap", str(pm)])
    assert r.exit_code == 1 and "B07" in r.output and "not on plate" in r.output
    info = json.loads(run("info", "--json").output)
    assert info["annotated_wells"] == 0  # nothing stored from the bad platemaps


def test_console_script_exit_code_and_stderr(tmp_path):
    """The installed `hts` entry point, as a user runs it."""
    hts = Path(sys.executable).with_name("hts")
    bad = tmp_path / "corrupt.nd2"
    bad.write_bytes(b"\xda\xce\xbe\x0a" + b"\x00" * 5000)
    p = subprocess.run([str(hts), "ingest", str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr.startswith("error:") and "corrupt.nd2" in p.stderr and "Traceback" not in p.stderr


def test_segment_and_engines_commands(tmp_path):
    from hts.synth import make_plate

    plate = make_plate(tmp_path / "raw", format="imagexpress", wells="A01:A02", fields=1, shape=(128, 128))
    assert run("ingest", str(plate.source)).exit_code == 0
    r = run("segment", "--engine", "classic", "--json", "-p", "nucleus_diameter_um=9", "--channels", "nucleus=DAPI")
    assert r.exit_code == 0, r.output
    (rep,) = json.loads(r.output)
    assert rep["status"] == "segmented" and rep["fields_segmented"] == 2 and rep["objects"]["nuclei"] > 5
    r = runner.invoke(app, ["segment", "--engine", "classic", "-p", "nucleus_diameter_um=12"])
    assert r.exit_code == 1 and "--label-suffix" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["segment", "--engine", "nosuch"])
    assert r.exit_code == 1 and "unknown engine 'nosuch'" in r.output
    r = run("engines", "--json")
    names = [e["name"] for e in json.loads(r.output)]
    assert {"classic", "foci", "nuclei", "brightfield-unet", "cytoplasm", "fpf"} <= set(names)
    r = run("engines", "--card", "classic")
    assert r.exit_code == 0 and "h_um" in r.output and "Propagation" in r.output


def test_query_formats_and_errors(tmp_path):
    import polars as pl

    assert run("ingest", str(CELLOMICS)).exit_code == 0
    r = run("query", "SELECT name, channel_index FROM channels ORDER BY channel_index", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == [
        {"name": "d0", "channel_index": 0},
        {"name": "d1", "channel_index": 1},
        {"name": "d2", "channel_index": 2},
    ]
    r = run("query", "SELECT well, n_fields FROM wells", "--format", "csv")
    assert r.output.splitlines() == ['"well","n_fields"', '"D03",1']
    out_file = tmp_path / "fields.parquet"
    r = run("query", "SELECT * FROM fields", "--format", "parquet", "--out", str(out_file))
    assert r.exit_code == 0, r.output
    df = pl.read_parquet(out_file)
    assert df["well"].to_list() == ["D03"] and df["status"].to_list() == ["complete"]
    r = run("query", "SELECT count(*) AS n FROM plates")
    assert r.exit_code == 0 and "1 rows" in r.output
    # bad SQL and writes are one-line errors, and nothing is changed
    r = runner.invoke(app, ["query", "SELEC 1"])
    assert r.exit_code == 1 and r.output.startswith("error: Parser Error") and "Traceback" not in r.output
    r = runner.invoke(app, ["query", "DELETE FROM plates"])
    assert r.exit_code == 1 and "read-only" in r.output
    assert json.loads(run("query", "SELECT count(*) AS n FROM plates", "--format", "json").output) == [{"n": 1}]
