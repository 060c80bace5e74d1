"""Plate geometry and well references, parsed in one place.

Every module that needs to know what "B03" means, how many rows a 384-well
plate has, or where a well lives inside the OME-Zarr store asks this module.

>>> parse_well("Well B3")
WellRef(row=1, column=2)
>>> parse_well("b03#2").name
'B03'
>>> PLATE_TYPES[384].rows, PLATE_TYPES[384].columns
(16, 24)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from hts.errors import SourceError

__all__ = [
    "PLATE_TYPES",
    "PlateType",
    "WellRef",
    "parse_well",
    "parse_well_range",
    "plate_type_for",
    "row_name",
    "snap_to_wells",
    "well_field_suffix",
]


@dataclass(frozen=True)
class PlateType:
    """A standard SBS microplate footprint."""

    wells: int
    rows: int
    columns: int
    pitch_um: float  # centre-to-centre distance of neighbouring wells

    @property
    def row_names(self) -> list[str]:
        return [row_name(r) for r in range(self.rows)]

    @property
    def column_names(self) -> list[str]:
        return [f"{c + 1:02d}" for c in range(self.columns)]


PLATE_TYPES: dict[int, PlateType] = {
    6: PlateType(6, 2, 3, 39_120.0),
    12: PlateType(12, 3, 4, 26_010.0),
    24: PlateType(24, 4, 6, 19_300.0),
    48: PlateType(48, 6, 8, 13_080.0),
    96: PlateType(96, 8, 12, 9_000.0),
    384: PlateType(384, 16, 24, 4_500.0),
    1536: PlateType(1536, 32, 48, 2_250.0),
}


def row_name(row: int) -> str:
    """Row letter(s) for a 0-based row index: 0 -> 'A', 25 -> 'Z', 26 -> 'AA' (1536-well plates)."""
    if row < 26:
        return chr(ord("A") + row)
    return "A" + chr(ord("A") + row - 26)


def _row_index(letters: str) -> int:
    letters = letters.upper()
    if len(letters) == 1:
        return ord(letters) - ord("A")
    if len(letters) == 2 and letters[0] == "A":
        return 26 + ord(letters[1]) - ord("A")
    raise ValueError(letters)


@dataclass(frozen=True, order=True)
class WellRef:
    """A well by 0-based row and column index."""

    row: int
    column: int

    @property
    def name(self) -> str:
        """Display name, zero-padded: 'B03'."""
        return f"{row_name(self.row)}{self.column + 1:02d}"

    @property
    def row_name(self) -> str:
        return row_name(self.row)

    @property
    def column_name(self) -> str:
        return f"{self.column + 1:02d}"

    @property
    def path(self) -> str:
        """Path of the well group inside an NGFF plate: 'B/03'."""
        return f"{self.row_name}/{self.column_name}"

    def __str__(self) -> str:
        return self.name


# "A01", "A1", "Well A01", "well_b3", "B12#2", "A01_s2", "AA04" (1536)
_WELL_RE = re.compile(
    r"^\s*(?:well[\s_-]*)?(?P<row>A[A-F]|[A-Z])\s*[-_]?\s*(?P<col>\d{1,2})(?:\s*(?:#|_s|_f|-s|-f|\s)\s*(?P<field>\d+))?\s*$",
    re.IGNORECASE,
)


def parse_well(text: str) -> WellRef:
    """Parse a well name such as ``A01``, ``A1``, ``Well A01`` or ``B12#2``.

    Raises ``ValueError`` when ``text`` is not a well name.
    """
    m = _WELL_RE.match(str(text))
    if not m:
        raise ValueError(f"not a well name: {text!r}")
    col = int(m["col"])
    if col < 1:
        raise ValueError(f"not a well name: {text!r} (columns start at 1)")
    return WellRef(_row_index(m["row"]), col - 1)


def well_field_suffix(text: str) -> int | None:
    """The field number a position name carries after its well (``B12#2`` -> 2), else None."""
    m = _WELL_RE.match(str(text))
    if m and m["field"] is not None:
        return int(m["field"])
    return None


def plate_type_for(wells: list[WellRef], *, hint: int | None = None) -> PlateType:
    """The smallest standard plate that holds all ``wells`` (or ``hint`` when given and large enough)."""
    max_row = max((w.row for w in wells), default=0)
    max_col = max((w.column for w in wells), default=0)
    candidates = [PLATE_TYPES[hint]] if hint else []
    candidates += [PLATE_TYPES[n] for n in (96, 384, 1536)]
    for pt in candidates:
        if max_row < pt.rows and max_col < pt.columns:
            return pt
    raise SourceError(f"well {WellRef(max_row, max_col).name} does not fit on any standard plate (96/384/1536)")


def parse_well_range(spec: str, plate: PlateType | None = None) -> list[WellRef]:
    """Wells named by a selection such as ``A01:B12`` (a rectangle), ``A01,C05`` or ``B`` (a row).

    >>> [w.name for w in parse_well_range("A01:B02")]
    ['A01', 'A02', 'B01', 'B02']
    """
    plate = plate or PLATE_TYPES[1536]
    out: list[WellRef] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if ":" in part:
            a, b = (parse_well(x) for x in part.split(":", 1))
            for r in range(min(a.row, b.row), max(a.row, b.row) + 1):
                for c in range(min(a.column, b.column), max(a.column, b.column) + 1):
                    out.append(WellRef(r, c))
        elif re.fullmatch(r"[A-Za-z]{1,2}", part):
            r = _row_index(part)
            out.extend(WellRef(r, c) for c in range(plate.columns))
        else:
            out.append(parse_well(part))
    return sorted(set(out))


def snap_to_wells(xy_um: np.ndarray, *, plate_wells: int | None = None) -> tuple[list[WellRef], PlateType]:
    """Assign stage positions (N×2, µm) to wells of a standard plate.

    Real stages carry an unknown offset, so the grid is fitted to the positions
    rather than taken from SBS absolute coordinates. For each candidate pitch,
    coarsest first (96, 384, 1536 wells, or only ``plate_wells``), the grid phase
    along each axis is the circular mean of ``position / pitch``; the pitch is
    accepted when every position lies within 0.3 pitch of a grid node (so fields
    spread inside a well are fine, but a 384-well layout never passes as a 96-well
    one: half its positions would sit half a pitch off). Rows run along stage Y and
    columns along stage X, A01 at the smallest X and Y. A layout that images only
    every other well of a 384-well plate is indistinguishable from a 96-well plate:
    pass ``plate_wells`` then.
    """
    xy = np.asarray(xy_um, dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0:
        raise SourceError("no stage positions to map onto plate wells")
    for n in [plate_wells] if plate_wells else [96, 384, 1536]:
        pt = PLATE_TYPES[n]
        u = xy / pt.pitch_um
        phase = np.angle(np.exp(2j * np.pi * u).mean(axis=0)) / (2 * np.pi)
        shifted = u - phase
        idx = np.round(shifted)
        if np.abs(shifted - idx).max() >= 0.3:
            continue
        idx = (idx - idx.min(axis=0)).astype(int)
        cols, rows = idx[:, 0], idx[:, 1]
        if cols.max() >= pt.columns or rows.max() >= pt.rows:
            continue
        return [WellRef(int(r), int(c)) for r, c in zip(rows, cols)], pt
    raise SourceError(
        "stage positions do not fall on a 96, 384 or 1536-well grid; "
        "name the positions by well (e.g. 'A01') or pass --plate-type"
    )
