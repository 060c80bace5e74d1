"""Workspace resolution: options > environment > hts.toml > defaults."""

from pathlib import Path

import pytest

from hts.config import load_workspace
from hts.errors import ConfigError


def test_defaults_are_the_current_folder():
    ws = load_workspace()
    assert ws.db == Path("hts.duckdb").resolve() and ws.plates_dir == Path("plates").resolve()
    assert ws.scheduler == "sync"  # set by the test fixture through HTS_SCHEDULER


def test_config_file_environment_and_options_in_order(monkeypatch, tmp_path):
    Path("hts.toml").write_text(
        '[workspace]\ndb = "cfg/screen.duckdb"\nplates_dir = "/data/plates"\nscheduler = "tcp://127.0.0.1:1"\n'
    )
    monkeypatch.delenv("HTS_SCHEDULER")
    ws = load_workspace()
    assert ws.db == Path("cfg/screen.duckdb").resolve()
    assert ws.plates_dir == Path("/data/plates") and ws.scheduler == "tcp://127.0.0.1:1"
    monkeypatch.setenv("HTS_DB", str(tmp_path / "env.duckdb"))
    assert load_workspace().db == tmp_path / "env.duckdb"
    assert load_workspace(db="opt.duckdb").db == Path("opt.duckdb").resolve()


def test_bad_config_is_a_clear_error(monkeypatch):
    Path("hts.toml").write_text("[workspace]\ndatabase = 'x'\n")
    with pytest.raises(ConfigError, match="unknown \\[workspace\\] keys \\['database'\\]"):
        load_workspace()
    Path("hts.toml").write_text("[workspace\n")
    with pytest.raises(ConfigError, match="hts.toml: invalid config file"):
        load_workspace()
    monkeypatch.setenv("HTS_CONFIG", "/nonexistent/hts.toml")
    with pytest.raises(ConfigError, match="HTS_CONFIG"):
        load_workspace()


def test_a_ducklake_catalog_from_the_config_file_environment_and_options(monkeypatch, tmp_path):
    from hts.catalog.lake import LakeCatalog

    url = "ducklake:postgres://hts:secret@db.lab:5432/screens"
    Path("hts.toml").write_text(f'[workspace]\ndb = "{url}"\ndata_path = "lake"\n')
    ws = load_workspace()
    assert ws.db == url and ws.data_path == str(Path("lake").resolve())  # relative to hts.toml, as db paths
    cat = ws.catalog
    assert isinstance(cat, LakeCatalog) and cat.data_path == str(Path("lake").resolve()) + "/"
    assert cat.name == "ducklake:postgres://hts:***@db.lab:5432/screens"  # messages never show the password
    assert cat.conninfo == "postgresql://hts:secret@db.lab:5432/screens"
    monkeypatch.setenv("HTS_DATA_PATH", "s3://bucket/lake")
    assert (
        load_workspace().data_path == "s3://bucket/lake" and load_workspace().catalog.data_path == "s3://bucket/lake/"
    )
    assert load_workspace(db="ducklake:postgres:dbname=x host=h").catalog.conninfo == "dbname=x host=h"
    assert load_workspace(db=str(tmp_path / "f.duckdb")).db == tmp_path / "f.duckdb"  # a file stays a Path
