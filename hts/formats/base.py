"""The contract every plate-format reader fulfils.

A reader turns one acquisition (an ND2 file, a folder of TIFFs) into a
:class:`PlateDescription` — wells, fields, channels, shape, pixel size — using
metadata only, and then reads one field at a time as a ``(t, c, z, y, x)`` array.
Readers hold nothing but paths and options, so they pickle cheaply to Dask
workers; each worker opens files itself.

All problems with the source are raised as :class:`hts.errors.SourceError`
naming the file at fault. ``describe()`` checks everything that metadata can
tell (naming, missing channels, shapes, dtypes, duplicate wells) before any
pixel is written anywhere.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hts.wells import PlateType, WellRef

__all__ = ["Channel", "PlateDescription", "PlateReader", "SourceField"]


@dataclass(frozen=True)
class Channel:
    """One acquired channel."""

    name: str
    emission_nm: float | None = None
    excitation_nm: float | None = None
    color: str | None = None  # display colour, "RRGGBB" hex


@dataclass(frozen=True)
class SourceField:
    """One field of view of one well, as the reader addresses it.

    ``key`` is reader-specific and picklable (an ND2 position index; for TIFF
    folders, a tuple of file paths ordered t, c, z).
    """

    well: WellRef
    index: int  # 0-based field number within the well, in acquisition order
    key: Any
    stage_xy_um: tuple[float, float] | None = None
    name: str | None = None  # the source's own label (ND2 position name, site token)


@dataclass
class PlateDescription:
    """Everything known about an acquisition before reading pixels."""

    name: str
    format: str  # "nd2", "imagexpress", "opera", "cellomics", "pattern"
    plate_type: PlateType
    channels: list[Channel]
    shape: tuple[int, int, int, int, int]  # per field: t, c, z, y, x
    dtype: str  # numpy dtype name, e.g. "uint16"
    fields: list[SourceField]
    files: list[Path]
    pixel_size_um: tuple[float | None, float | None, float | None] = (None, None, None)  # x, y, z
    time_interval_s: float | None = None
    instrument: dict[str, Any] = field(default_factory=dict)

    @property
    def wells(self) -> list[WellRef]:
        return sorted({f.well for f in self.fields})

    @property
    def fields_per_well(self) -> dict[WellRef, int]:
        out: dict[WellRef, int] = {}
        for f in self.fields:
            out[f.well] = out.get(f.well, 0) + 1
        return out


class PlateReader(abc.ABC):
    """Base class of the format readers. Subclasses set ``format`` and implement the methods."""

    format: ClassVar[str]

    def __init__(self, source: str | Path, **options: Any):
        self.source = Path(source)
        self.options = options

    @classmethod
    @abc.abstractmethod
    def sniff(cls, path: Path) -> bool:
        """True when ``path`` looks like this format (cheap: names and magic bytes only)."""

    @abc.abstractmethod
    def describe(self) -> PlateDescription:
        """Scan metadata, validate consistency, and describe the plate. Raises SourceError."""

    @abc.abstractmethod
    def read_field(self, field: SourceField, description: PlateDescription) -> np.ndarray:
        """Pixel data of one field as ``(t, c, z, y, x)`` in the described dtype. Raises SourceError."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.source)!r})"


def fingerprint(files: list[Path], *, root: Path, sample: int = 65536) -> str:
    """A quick identity of an acquisition: names (relative to ``root``), sizes and sampled bytes.

    Reads at most ``2 * sample`` bytes per file (head and tail), so re-ingesting a
    multi-GB plate is recognised in milliseconds; :func:`checksum` is the full hash.
    """
    import hashlib

    h = hashlib.sha256()
    for p in sorted(files):
        rel = p.name if p == root else str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with open(p, "rb") as fh:
            h.update(fh.read(sample))
            if size > sample:
                fh.seek(max(sample, size - sample))
                h.update(fh.read(sample))
    return h.hexdigest()


def checksum(files: list[Path], *, block: int = 1 << 22) -> str:
    """sha256 of a single file, or of the sorted ``name:sha256`` list of several files."""
    import hashlib

    def one(p: Path) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            while chunk := fh.read(block):
                h.update(chunk)
        return h.hexdigest()

    if len(files) == 1:
        return one(files[0])
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(f"{p.name}:{one(p)}\n".encode())
    return h.hexdigest()
