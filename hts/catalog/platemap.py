"""Platemaps: per-well treatment read from CSV, validated against schemas/platemap.schema.json.

A platemap CSV has a header row. Required columns: ``well`` and ``role``;
optional ``compound``, ``concentration``, ``unit``; any other column is kept as a
free value (stored as JSON in ``platemap.extra``). Column names are matched
case-insensitively. Every problem is reported with its CSV line number.
"""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from hts.catalog.db import Catalog, PlateRecord
from hts.errors import PlatemapError
from hts.resources import schema_path
from hts.wells import PLATE_TYPES, parse_well

if TYPE_CHECKING:
    import jsonschema

__all__ = ["read_platemap", "annotate"]

_ROLE_ALIASES = {
    "sample": "sample",
    "treatment": "sample",
    "neg": "negative_control",
    "negative": "negative_control",
    "negative_control": "negative_control",
    "neg_control": "negative_control",
    "neg_ctrl": "negative_control",
    "control-": "negative_control",
    "pos": "positive_control",
    "positive": "positive_control",
    "positive_control": "positive_control",
    "pos_control": "positive_control",
    "pos_ctrl": "positive_control",
    "control+": "positive_control",
    "empty": "empty",
    "blank": "empty",
}
_KNOWN = ("well", "compound", "concentration", "unit", "role")


@cache
def _validator() -> jsonschema.protocols.Validator:
    import jsonschema  # 0.12 s: imported when a platemap is read, not by every command that opens the catalog

    schema = json.loads(schema_path("platemap.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


#: Longest text a platemap cell may hold (compound names, SMILES, notes).
MAX_CELL = 10_000


def read_platemap(path: str | Path, *, plate_wells: int = 1536) -> list[dict[str, Any]]:
    """Parse and validate a platemap CSV. Returns one dict per well (normalized).

    Raises PlatemapError naming the file and line of the first bad row.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise PlatemapError(f"{path}: cannot read platemap ({e})") from None
    dialect = csv.excel_tab if text.count("\t") > text.count(",") else csv.excel
    reader = csv.reader(text.splitlines(), dialect)
    header = next(reader, None)
    if not header:
        raise PlatemapError(f"{path}: empty platemap")
    cols = [h.strip() for h in header]
    lower = [c.lower() for c in cols]
    for need in ("well", "role"):
        if need not in lower:
            raise PlatemapError(f"{path}: no '{need}' column (columns: {', '.join(cols)})")
    if len(set(lower)) != len(lower):
        raise PlatemapError(f"{path}: duplicate column names in header ({', '.join(cols)})")
    plate = PLATE_TYPES[plate_wells]
    seen: dict[str, int] = {}
    out = []
    rows = enumerate(reader, start=2)
    while True:
        try:
            line_no, values = next(rows)
        except StopIteration:
            break
        except csv.Error as e:  # e.g. a cell over the csv module's field limit, an unclosed quote
            raise PlatemapError(f"{path} line {reader.line_num}: unreadable CSV ({e})") from None
        if not any(v.strip() for v in values):
            continue
        where = f"{path} line {line_no}"
        long = next((i for i, v in enumerate(values) if len(v) > MAX_CELL), None)
        if long is not None:
            raise PlatemapError(
                f"{where}: the {cols[long] if long < len(cols) else 'extra'} cell has {len(values[long])} "
                f"characters (at most {MAX_CELL})"
            )
        if len(values) != len(cols):
            raise PlatemapError(f"{where}: {len(values)} values for {len(cols)} columns")
        raw = {k: v.strip() for k, v in zip(lower, values)}
        row: dict[str, Any] = {"well": raw["well"]}
        row["role"] = _ROLE_ALIASES.get(raw["role"].lower().replace(" ", "_"), raw["role"])
        row["compound"] = raw.get("compound") or None
        row["unit"] = raw.get("unit") or None
        conc = raw.get("concentration", "")
        try:
            row["concentration"] = float(conc) if conc != "" else None
        except ValueError:
            raise PlatemapError(f"{where}: concentration {conc!r} is not a number") from None
        extra = {cols[i]: values[i].strip() for i, k in enumerate(lower) if k not in _KNOWN}
        try:
            well = parse_well(row["well"])
        except ValueError:
            raise PlatemapError(f"{where}: {row['well']!r} is not a well name (like A01 or B3)") from None
        if well.row >= plate.rows or well.column >= plate.columns:
            raise PlatemapError(f"{where}: well {well.name} is not on a {plate.wells}-well plate")
        errors = sorted(_validator().iter_errors({**row, **extra}), key=str)
        if errors:
            e = errors[0]
            field = e.path[0] if e.path else ""
            if e.validator == "maxLength":  # jsonschema's message repeats the whole value
                msg = f"is {len(e.instance)} characters long (at most {e.validator_value})"
            else:
                msg = e.message if len(e.message) <= 200 else e.message[:200] + "..."
            raise PlatemapError(f"{where}: {field} {msg}".replace("  ", " "))
        if well.name in seen:
            raise PlatemapError(f"{where}: well {well.name} is already described on line {seen[well.name]}")
        seen[well.name] = line_no
        row["well"] = well.name
        row["extra"] = extra or None
        out.append(row)
    if not out:
        raise PlatemapError(f"{path}: no rows")
    return out


def annotate(
    catalog: Catalog, plate: PlateRecord, platemap: str | Path, *, replace: bool = True, imaged_only: bool = False
) -> int:
    """Validate ``platemap`` against ``plate`` and store it in the catalog. Returns the number of wells.

    Wells in the platemap that the plate does not have are an error (a platemap
    for another plate, or a typo); plate wells the platemap does not mention are
    left without treatment. ``imaged_only``: leave out rows of wells not imaged yet
    instead (``hts watch`` annotates again as wells arrive).
    """
    rows = read_platemap(platemap, plate_wells=plate.plate_type)
    have = {r["well"] for r in catalog.query("SELECT well FROM wells WHERE plate_id = ?", [plate.plate_id])}
    if imaged_only:
        rows = [r for r in rows if r["well"] in have]
    missing = [r["well"] for r in rows if r["well"] not in have]
    if missing:
        raise PlatemapError(
            f"{platemap}: wells {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''} are not on plate "
            f"{plate.name} ({len(have)} wells imaged)"
        )
    table = pa.table(
        {
            "plate_id": [plate.plate_id] * len(rows),
            "well": [r["well"] for r in rows],
            "compound": [r["compound"] for r in rows],
            "concentration": pa.array([r["concentration"] for r in rows], pa.float64()),
            "unit": [r["unit"] for r in rows],
            "role": [r["role"] for r in rows],
            "extra": [json.dumps(r["extra"]) if r["extra"] else None for r in rows],
            "source_file": [str(Path(platemap).resolve())] * len(rows),
        }
    )
    with catalog.connect() as con:
        con.execute("BEGIN")
        if replace:
            con.execute("DELETE FROM platemap WHERE plate_id = ?", [plate.plate_id])
        con.register("_pm", table)
        con.execute(
            "INSERT INTO platemap SELECT plate_id, well, compound, concentration, unit, role, "
            "CAST(extra AS JSON), source_file FROM _pm"
        )
        con.execute("COMMIT")
    return len(rows)
