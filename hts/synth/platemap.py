"""Dose-response platemaps for synthetic plates.

A classic screening layout: the first used column holds negative controls
(DMSO), the last used column positive controls (a reference compound at the
top concentration), and the columns in between a dilution series (1:3 from
30 µM by default) of one or two test compounds, alternating by row.
:func:`dose_of` turns a platemap row into the normalised ``dose`` that
:func:`hts.synth.synth_field` renders.

>>> rows = dose_response_layout(96, "A01:A04")
>>> [(r["well"], r["role"], r["concentration"]) for r in rows]
[('A01', 'negative_control', 0.0), ('A02', 'sample', 30.0), ('A03', 'sample', 10.0), ('A04', 'positive_control', 30.0)]
>>> [round(dose_of(r), 3) for r in rows]
[0.0, 0.996, 0.978, 1.0]
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hts.wells import PLATE_TYPES, PlateType, WellRef, parse_well, parse_well_range

__all__ = [
    "COMPOUNDS",
    "NEGATIVE_CONTROL",
    "REFERENCE_COMPOUND",
    "dose_of",
    "dose_response_layout",
    "write_platemap_csv",
]

#: Test compounds of the synthetic screen and their potency (EC50, µM).
COMPOUNDS: dict[str, float] = {"CMPD-001": 0.8, "CMPD-002": 6.0}
#: The positive-control reference compound and its potency (EC50, µM).
REFERENCE_COMPOUND: tuple[str, float] = ("Staurosporine", 0.05)
#: The vehicle in negative-control wells.
NEGATIVE_CONTROL = "DMSO"

HILL_SLOPE = 1.5
_DEFAULT_EC50_UM = 3.0
_UNIT_TO_UM = {"M": 1e6, "mM": 1e3, "uM": 1.0, "µM": 1.0, "nM": 1e-3, "pM": 1e-6}
_COLUMNS = ("well", "compound", "concentration", "unit", "role")


def _plate(plate_type: int | PlateType) -> PlateType:
    if isinstance(plate_type, PlateType):
        return plate_type
    try:
        return PLATE_TYPES[int(plate_type)]
    except (KeyError, ValueError):
        sizes = ", ".join(map(str, PLATE_TYPES))
        raise ValueError(f"plate_type {plate_type!r}: not a standard plate ({sizes})") from None


def _wells(plate: PlateType, wells: str | Iterable[WellRef | str] | None) -> list[WellRef]:
    if wells is None:
        out = [WellRef(r, c) for r in range(plate.rows) for c in range(plate.columns)]
    elif isinstance(wells, str):
        out = parse_well_range(wells, plate)
    else:
        out = sorted({w if isinstance(w, WellRef) else parse_well(w) for w in wells})
    for w in out:
        if w.row >= plate.rows or w.column >= plate.columns:
            raise ValueError(f"well {w.name} is not on a {plate.wells}-well plate")
    if not out:
        raise ValueError("no wells")
    return out


def dose_response_layout(
    plate_type: int | PlateType = 96,
    wells: str | Iterable[WellRef | str] | None = None,
    *,
    top_um: float = 30.0,
    dilution: float = 3.0,
    compounds: Sequence[str] = tuple(COMPOUNDS),
) -> list[dict[str, Any]]:
    """Treatments of ``wells`` in a dose-response layout.

    Parameters
    ----------
    plate_type : int or PlateType
        Plate size (6 ... 1536 wells).
    wells : str or iterable of WellRef/str, optional
        The wells to describe: a :func:`hts.wells.parse_well_range` spec such as
        ``"A01:H12"``, or well references. ``None``: every well of the plate.
    top_um : float
        Highest concentration of the series and the positive-control concentration, µM.
    dilution : float
        Dilution factor between neighbouring columns of the series (> 1).
    compounds : sequence of str
        Test compounds, assigned to rows in turn (A: first, B: second, C: first ...).

    Returns
    -------
    list of dict
        One row per well, in well order, with keys ``well`` (``"B03"``),
        ``compound``, ``concentration`` (float, µM), ``unit`` (``"uM"``) and
        ``role``: ``"negative_control"`` in the first used column (DMSO,
        concentration 0), ``"positive_control"`` in the last used column (the
        reference compound at ``top_um``), ``"sample"`` in between, the
        concentration falling by ``dilution`` per column from ``top_um``.
    """
    if dilution <= 1.0:
        raise ValueError(f"dilution must be > 1, got {dilution}")
    if top_um <= 0:
        raise ValueError(f"top_um must be > 0, got {top_um}")
    if not compounds:
        raise ValueError("at least one compound is needed")
    plate = _plate(plate_type)
    selected = _wells(plate, wells)
    columns = sorted({w.column for w in selected})
    rows_used = sorted({w.row for w in selected})
    first, last = columns[0], columns[-1]
    series = {c: k for k, c in enumerate(columns[1:-1])}
    out: list[dict[str, Any]] = []
    for w in selected:
        if w.column == first:
            row = {"compound": NEGATIVE_CONTROL, "concentration": 0.0, "role": "negative_control"}
        elif w.column == last:
            row = {"compound": REFERENCE_COMPOUND[0], "concentration": float(top_um), "role": "positive_control"}
        else:
            compound = compounds[rows_used.index(w.row) % len(compounds)]
            conc = float(top_um) / float(dilution) ** series[w.column]
            row = {"compound": compound, "concentration": conc, "role": "sample"}
        out.append({"well": w.name, "compound": row["compound"], "concentration": row["concentration"],
                    "unit": "uM", "role": row["role"]})  # fmt: skip
    return out


def _ec50_um(compound: str | None) -> float:
    if compound is None:
        return _DEFAULT_EC50_UM
    if compound == REFERENCE_COMPOUND[0]:
        return REFERENCE_COMPOUND[1]
    return COMPOUNDS.get(compound, _DEFAULT_EC50_UM)


def dose_of(row: Mapping[str, Any]) -> float:
    """Normalised dose (0..1) for :func:`hts.synth.synth_field` from a platemap row.

    Negative controls and empty wells give 0, positive controls 1, samples a
    Hill curve of their concentration, ``c^n / (c^n + EC50^n)`` with ``n = 1.5``
    and the compound's EC50 from :data:`COMPOUNDS` (3 µM for compounds it does
    not know). Works on rows of :func:`dose_response_layout` and on rows read
    back from a platemap CSV (roles and units as the catalog normalises them).
    """
    role = str(row.get("role") or "sample").strip().lower()
    if role in ("negative_control", "empty"):
        return 0.0
    if role == "positive_control":
        return 1.0
    conc = row.get("concentration")
    if conc is None or conc == "":
        return 0.0
    unit = str(row.get("unit") or "uM").strip()
    c = float(conc) * _UNIT_TO_UM.get(unit, 1.0)
    if not math.isfinite(c) or c <= 0:
        return 0.0
    ec50 = _ec50_um(row.get("compound"))
    return float(c**HILL_SLOPE / (c**HILL_SLOPE + ec50**HILL_SLOPE))


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_platemap_csv(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write platemap rows as a CSV that ``hts annotate`` reads.

    Columns ``well, compound, concentration, unit, role`` first, then any other
    keys the rows carry, in order of first appearance. Concentrations are
    written with six significant digits. Returns the path written.
    """
    rows = list(rows)
    extra: list[str] = []
    for r in rows:
        extra.extend(k for k in r if k not in _COLUMNS and k not in extra and k != "extra")
    header = [*_COLUMNS, *extra]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        for r in rows:
            writer.writerow([_fmt(r.get(k)) for k in header])
    return path
