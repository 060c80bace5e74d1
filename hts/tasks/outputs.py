"""Where commands may write their outputs: never onto the catalog or a plate store, and replace only their own.

Every command that writes a user-named file or folder (``query --out``,
``export --out``, ``report --out``) checks it here first:

- :func:`check_output_path` refuses a path that is, contains or lies inside the
  catalog file (and its write-ahead log) or a local plate store of the catalog
  (or the workspace's plates folder): ``hts query --out hts.duckdb`` and
  ``hts export --out . --overwrite`` in a workspace are refused before anything
  is written.
- :func:`check_replaceable` lets ``--overwrite`` replace a folder only when it
  is an earlier output of the same kind that hts wrote itself: the folder holds
  hts's marker file (:data:`MARKER`) listing every file it wrote, and nothing
  else. A folder of the user's own files is refused, ``--overwrite`` or not.
- :func:`write_marker` writes that marker into a new output (before it is
  renamed into place, so a complete output always carries it).
"""

from __future__ import annotations

import json
from pathlib import Path

from hts import __version__
from hts.catalog import Catalog
from hts.errors import CatalogError
from hts.store.location import is_url

__all__ = [
    "MARKER",
    "check_output_path",
    "check_replaceable",
    "write_marker",
    "protected_paths",
    "spreadsheet_safe_sql",
    "spreadsheet_safe_table",
]

MARKER = ".hts-output.json"


def protected_paths(catalog: Catalog, plates_dir: str | Path | None = None) -> list[tuple[Path, str]]:
    """(path, what it is) of everything an output must not touch: the catalog and the local plate stores."""
    files = [Path(p).expanduser().resolve() for p in catalog.files()]
    out = [(p, "the catalog" if i == 0 else "the catalog's write-ahead log") for i, p in enumerate(files)]
    if catalog.exists():
        try:
            for p in catalog.plates():
                if not is_url(p.store_uri):
                    out.append((Path(p.store_uri).expanduser().resolve(), f"plate store {p.name}"))
        except CatalogError:  # an unreadable catalog: its file is still protected
            pass
    if plates_dir and not is_url(str(plates_dir)):
        out.append((Path(plates_dir).expanduser().resolve(), "the plates folder"))
    return out


def check_output_path(
    path: str | Path, catalog: Catalog, *, option: str = "--out", plates_dir: str | Path | None = None
) -> Path:
    """``path`` resolved; raises :class:`CatalogError` when writing there could touch the catalog or a plate store."""
    target = Path(path).expanduser().resolve()
    for p, what in protected_paths(catalog, plates_dir):
        if target == p or p in target.parents:
            raise CatalogError(f"{option} {path}: that is {what} ({p}) or inside it; choose another path")
        if target in p.parents:
            raise CatalogError(f"{option} {path}: that folder holds {what} ({p}); choose another path")
    return target


def check_replaceable(folder: Path, kind: str, *, overwrite: bool) -> None:
    """Refuse to write ``folder`` unless it is new, empty, or (with ``overwrite``) hts's own earlier ``kind`` output."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise CatalogError(f"{folder} exists and is not a folder; choose another path")
    present = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    if not present and not any(folder.iterdir()):
        return
    marker = folder / MARKER
    if not overwrite:
        raise CatalogError(f"{folder} exists and is not empty; pass --overwrite to replace an earlier hts {kind} there")
    try:
        doc = json.loads(marker.read_text())
    except (OSError, ValueError):
        raise CatalogError(
            f"{folder} holds files hts did not write (no {MARKER}); --overwrite only replaces an earlier hts {kind}: "
            "choose a new or empty folder"
        ) from None
    if doc.get("kind") != kind:
        raise CatalogError(f"{folder} holds an hts {doc.get('kind')!r} output, not a {kind}; choose another folder")
    foreign = [f for f in present if f != MARKER and f not in set(doc.get("files", []))]
    if foreign:
        raise CatalogError(
            f"{folder} holds files hts did not write (e.g. {foreign[0]}); --overwrite only replaces an earlier hts "
            f"{kind}: move them or choose another folder"
        )


def write_marker(folder: Path, kind: str) -> None:
    """Record every file under ``folder`` as written by hts (``kind``: export, report, ...)."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    (folder / MARKER).write_text(
        json.dumps({"kind": kind, "hts_version": __version__, "files": files}, indent=1) + "\n"
    )


def spreadsheet_safe_sql(con, query: str) -> str:
    """``query`` with every text column that would start a spreadsheet formula prefixed by ``'`` (CSV outputs only)."""
    cols = con.execute(f"DESCRIBE {query}").fetchall()
    text = [c[0] for c in cols if c[1] == "VARCHAR"]
    if not text:
        return query
    repl = ", ".join(
        f"CASE WHEN regexp_matches({_q(c)}, {_FORMULA_RE_SQL}) THEN chr(39) || {_q(c)} ELSE {_q(c)} END AS {_q(c)}"
        for c in text
    )
    return f"SELECT * REPLACE ({repl}) FROM ({query})"


def spreadsheet_safe_table(table):
    """An Arrow table whose string cells that would start a spreadsheet formula are prefixed by ``'``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            risky = pc.fill_null(pc.match_substring_regex(col, _FORMULA_RE), False)
            col = pc.if_else(risky, pc.binary_join_element_wise("'", col, ""), col)
        cols.append(col)
    return pa.table(cols, names=table.column_names)


_FORMULA_RE = "^[=+@\t\r-]"
_FORMULA_RE_SQL = "'^[=+@' || chr(9) || chr(13) || '-]'"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
