"""Plate acquisition formats: one reader per format, and sniffing.

>>> reader = open_plate("plate.nd2")                      # doctest: +SKIP
>>> reader = open_plate("exports/", pattern="{well}_s{field}_{channel}.tif")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hts.errors import SourceError
from hts.formats.base import Channel, PlateDescription, PlateReader, SourceField

__all__ = [
    "Channel",
    "PlateDescription",
    "PlateReader",
    "SourceField",
    "FORMATS",
    "open_plate",
]


def _readers() -> dict[str, type[PlateReader]]:
    from hts.formats.nd2 import ND2Reader
    from hts.formats.tiff import CellomicsReader, ImageXpressReader, OperaReader, PatternReader

    return {
        r.format: r for r in (ND2Reader, ImageXpressReader, OperaReader, CellomicsReader, PatternReader)
    }


FORMATS = ("nd2", "imagexpress", "opera", "cellomics", "pattern")


def open_plate(
    source: str | Path, *, format: str | None = None, pattern: str | None = None, **options: Any
) -> PlateReader:
    """The reader for an acquisition: an ``.nd2`` file or a folder of TIFFs.

    ``format`` forces a reader (one of :data:`FORMATS`); ``pattern`` (e.g.
    ``'{well}_s{field}_{channel}.tif'``) selects the pattern reader for folders
    whose naming is not one of the known layouts. Other options go to the reader.
    """
    from hts.formats.tiff import detect_tiff_layout

    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    readers = _readers()
    if pattern:
        format = "pattern"
        options["pattern"] = pattern
    if format:
        if format not in readers:
            raise SourceError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
        return readers[format](path, **options)
    if path.is_dir():
        return detect_tiff_layout(path)(path, **options)
    if readers["nd2"].sniff(path):
        return readers["nd2"](path, **options)
    raise SourceError(
        f"{path}: not an ND2 file or a folder of TIFFs; single TIFF files are ingested as a folder plate"
    )
