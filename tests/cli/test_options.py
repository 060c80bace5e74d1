"""Option names that mean one thing everywhere, and the old spellings kept (hidden) for one release."""

from __future__ import annotations

import json

from conftest import CELLOMICS
from typer.testing import CliRunner

from hts.cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_ingest_reader_and_its_old_name():
    help_text = _flat(run("ingest", "--help").output)
    assert "--reader" in help_text and "--format" not in help_text  # --format is an output format elsewhere
    r = run("ingest", str(CELLOMICS), "--reader", "cellomics", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["status"] == "ingested"
    r = run("ingest", str(CELLOMICS), "--format", "cellomics", "--json")  # the old spelling still works
    assert r.exit_code == 0 and json.loads(r.output)["status"] == "unchanged", r.output
    r = run("ingest", str(CELLOMICS), "--reader", "nope")
    assert r.exit_code == 1 and "unknown format 'nope'" in _flat(r.output)


def test_one_way_to_give_an_engine_folder(tmp_path):
    assert "--engine-path" not in run("segment", "--help").output
    assert run("ingest", str(CELLOMICS)).exit_code == 0
    missing = tmp_path / "my-engine"
    for args in (("--engine", str(missing)), ("--engine-path", str(missing))):
        r = run("segment", *args)
        text = _flat(r.output)
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert "my-engine" in text and "not" in text, text
    r = run("segment", "--engine", "no-such-engine")
    assert r.exit_code == 1 and "unknown engine 'no-such-engine'" in _flat(r.output) and "classic" in r.output


def test_out_is_the_path_of_what_a_command_makes():
    """Every --out names the thing the command writes (a plate store, a folder, a file, an engine folder)."""
    import typer

    cmd = typer.main.get_command(app)
    helps = {}
    for name, c in cmd.commands.items():
        for p in c.params:
            if "--out" in p.opts:
                helps[name] = p.help
    assert set(helps) == {"ingest", "query", "export", "report", "train"}
    for name, text in helps.items():
        assert any(w in text.lower() for w in ("store", "folder", "file", "write")), (name, text)
