"""Catalog migrations and platemap validation."""

import duckdb
import pytest

from hts.catalog import Catalog, read_platemap
from hts.catalog.db import migrations
from hts.errors import CatalogError, PlatemapError


def test_migrations_apply_once_and_are_recorded(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    with cat.connect():
        pass
    with cat.connect():  # second open: nothing re-applied
        pass
    con = duckdb.connect(str(cat.path), read_only=True)
    versions = [r[0] for r in con.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()]
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    con.close()
    assert versions == [v for v, _, _ in migrations()]
    assert {"plates", "acquisitions", "channels", "wells", "fields", "platemap", "field_channel_stats"} <= tables


def test_newer_catalog_is_refused_untouched(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    with cat.connect():
        pass
    con = duckdb.connect(str(cat.path))
    con.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'from_the_future')")
    con.close()
    with pytest.raises(CatalogError, match="newer than this hts"):
        with cat.connect():
            pass


def test_missing_and_foreign_catalogs(tmp_path):
    with pytest.raises(CatalogError, match="no catalog here"):
        with Catalog(tmp_path / "none.duckdb").connect(read_only=True):
            pass
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CatalogError, match="bad.duckdb"):
        with Catalog(bad).connect():
            pass
    assert bad.read_bytes().startswith(b"this is not a database")


def test_bad_sql_is_one_line(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    with cat.connect():
        pass
    with pytest.raises(CatalogError, match="nosuchtable"):
        cat.query("SELECT * FROM nosuchtable")


def _csv(tmp_path, text):
    p = tmp_path / "layout.csv"
    p.write_text(text)
    return p


def test_platemap_reads_and_normalizes(tmp_path):
    p = _csv(
        tmp_path,
        "Well,Compound,Concentration,Unit,Role,cell_line\n"
        "A1,DMSO,0,uM,neg,U2OS\n"
        "A02,staurosporine,1.5,uM,positive control,U2OS\n"
        "B03,cpd-7,0.37,uM,sample,HeLa\n\n",
    )
    rows = read_platemap(p, plate_wells=96)
    assert [r["well"] for r in rows] == ["A01", "A02", "B03"]
    assert [r["role"] for r in rows] == ["negative_control", "positive_control", "sample"]
    assert rows[2]["concentration"] == pytest.approx(0.37)
    assert rows[2]["extra"] == {"cell_line": "HeLa"}


@pytest.mark.parametrize(
    "text, match",
    [
        ("Well,Role\nA1,sample\nA01,sample\n", r"line 3: well A01 is already described on line 2"),
        ("Well,Role\nA1,sample\nZ99,sample\n", r"line 3: well Z99 is not on a 96-well plate"),
        ("Well,Role\nA1,sample\nI01,sample\n", r"line 3: well I01 is not on a 96-well plate"),
        ("Well,Role,Concentration\nA1,sample,lots\n", r"line 2: concentration 'lots' is not a number"),
        ("Well,Role,Concentration\nA1,sample,-1\n", r"line 2: concentration .*minimum"),
        ("Well,Role\nA1,treated\n", r"line 2: role 'treated' is not one of"),
        ("Well,Role,Unit\nA1,sample,furlongs\n", r"line 2: unit 'furlongs' is not one of"),
        ("Well,Compound\nA1,DMSO\n", r"no 'role' column"),
        ("Well,Role\nA1,sample,extra\n", r"line 2: 3 values for 2 columns"),
        ("", r"empty platemap"),
        ("Well,Role\n", r"no rows"),
    ],
)
def test_platemap_bad_rows(tmp_path, text, match):
    with pytest.raises(PlatemapError, match=match):
        read_platemap(_csv(tmp_path, text), plate_wells=96)


def test_session_reuses_one_connection_and_creates_no_file(tmp_path):
    absent = Catalog(tmp_path / "absent.duckdb")
    with absent.session():
        pass
    assert not absent.path.exists()  # a session never creates a catalog

    cat = Catalog(tmp_path / "c.duckdb")
    with cat.connect():
        pass
    with cat.session():
        with cat.connect() as a, cat.connect(read_only=True) as b:
            assert a is b
        assert cat.query("SELECT count(*) AS n FROM plates") == [{"n": 0}]
    with cat.connect() as c:  # after the block: a fresh connection again
        assert c is not a


def test_a_catalog_written_by_a_newer_duckdb_is_refused_in_one_line(tmp_path, monkeypatch):
    """hts pins one DuckDB (the version the DuckLake extensions exist for); a file from a newer DuckDB
    is named as such, not reported as a broken file. The error is the one DuckDB 1.5.5 raises on a
    catalog written by DuckDB 2.0.1 (measured; a file cannot be forged: its header is checksummed)."""
    path = tmp_path / "newer.duckdb"
    path.write_bytes(b"x")

    def newer(*args, **kwargs):
        raise duckdb.IOException(
            "IO Error: Trying to read a database file with version number 999, but we can only read versions "
            "between 64 and 68.\nThe database file was created with an newer version of DuckDB."
        )

    monkeypatch.setattr(duckdb, "connect", newer)
    with pytest.raises(CatalogError, match=r"written by a newer DuckDB than this hts runs \(DuckDB 1\.5\.5\)"):
        Catalog(path).plates()


def test_cells_load_adds_new_columns_once_per_schema(tmp_path, monkeypatch):
    import pyarrow as pa

    from hts.catalog import cells as cells_db

    cat = Catalog(tmp_path / "c.duckdb")
    keys = {"plate_id": ["p"], "run_id": ["r"], "well": ["A01"], "field_index": pa.array([0], pa.int32()),
            "t": pa.array([0], pa.int32()), "object_id": pa.array([1], pa.int64())}  # fmt: skip
    a = pa.table({**keys, "Nuclei_Area": [10.0]})
    b = pa.table({**keys, "Nuclei_Area": [20.0], "Nuclei_Solidity": [0.9]})
    calls = []
    real = cells_db._add_columns
    monkeypatch.setattr(cells_db, "_add_columns", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    with cat.connect() as con:
        assert cells_db.load_tables(con, [a, a, b, a, b], where=list("abcde")) == 5
        rows = con.execute("SELECT Nuclei_Area, Nuclei_Solidity FROM cells ORDER BY Nuclei_Area").fetchall()
        assert rows == [(10.0, None)] * 3 + [(20.0, 0.9)] * 2
        assert calls == ["a", "c"]  # each distinct schema checked once
        bad = pa.table({**keys, "Nuclei_Note": pa.array([[1]], pa.list_(pa.int64()))})
        with pytest.raises(ValueError, match="e: column 'Nuclei_Note' has unsupported type"):
            cells_db.load_tables(con, [a, bad], where=["d", "e"])
