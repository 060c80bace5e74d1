"""Plate acquisition formats: one reader per format, and sniffing.

Readers are registered as entry points of group ``hts.readers`` (name = the
reader's ``format``, value ``module:Class``); hts declares its own that way, so a
package adds a format as hts does (see :mod:`hts.plugins`).

>>> reader = open_plate("plate.nd2")                      # doctest: +SKIP
>>> reader = open_plate("exports/", pattern="{well}_s{field}_{channel}.tif")  # doctest: +SKIP
>>> reader = open_plate("run42/", format="myformat")     # doctest: +SKIP
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from hts.errors import SourceError
from hts.formats.base import Channel, PlateDescription, PlateReader, SourceField
from hts.plugins import PluginError, Registry, load_group

__all__ = [
    "Channel",
    "PlateDescription",
    "PlateReader",
    "SourceField",
    "FORMATS",
    "GROUP",
    "open_plate",
    "plugin_errors",
    "reader_package",
    "readers",
]

GROUP = "hts.readers"

# hts's own readers in detection order, as its pyproject.toml declares them: used when the installed metadata does
# not (a source tree never installed). tests/compute/test_plugins.py keeps the two equal.
BUILTIN_READERS: dict[str, str] = {
    "nd2": "hts.formats.nd2:ND2Reader",
    "imagexpress": "hts.formats.tiff:ImageXpressReader",
    "opera": "hts.formats.tiff:OperaReader",
    "cellomics": "hts.formats.tiff:CellomicsReader",
    "pattern": "hts.formats.tiff:PatternReader",
}


@cache
def _registry() -> Registry:
    return load_group(GROUP, BUILTIN_READERS, base=PlateReader, key="format")


def readers() -> dict[str, type[PlateReader]]:
    """Every registered reader by format: the built-ins first, then the plug-ins by name."""
    return dict(_registry().classes)


def reader_package(format: str) -> str:
    """The distribution that provides the reader of ``format`` (``"hts"`` for the built-ins)."""
    reg = _registry()
    if format not in reg.packages:
        raise SourceError(f"unknown format {format!r}; choose one of {', '.join(reg.classes)}")
    return reg.packages[format]


def plugin_errors() -> list[PluginError]:
    """The ``hts.readers`` entry points that were left out, each with its one-line reason."""
    return list(_registry().errors)


def __getattr__(name: str) -> Any:
    # FORMATS is computed on first use, so importing hts.formats loads no plug-in
    if name == "FORMATS":
        return tuple(_registry().classes)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_plate(
    source: str | Path, *, format: str | None = None, pattern: str | None = None, **options: Any
) -> PlateReader:
    """The reader for an acquisition: an ``.nd2`` file or a folder of TIFFs, or a source a plug-in reader claims.

    ``format`` forces a reader (one of :data:`FORMATS`); ``pattern`` (e.g.
    ``'{well}_s{field}_{channel}.tif'``) selects the pattern reader for folders
    whose naming is not one of the known layouts. Otherwise plug-in readers are
    asked first (their ``sniff(path)``: a vendor layout a plug-in exists for is
    more specific than the built-in TIFF guess), then the built-in detection.
    Other options go to the reader.
    """
    from hts.formats.tiff import detect_tiff_layout

    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    reg = _registry()
    if pattern:
        format = "pattern"
        options["pattern"] = pattern
    if format:
        if format not in reg.classes:
            why = next((f" (its plug-in did not load: {e.reason})" for e in reg.errors if e.name == format), "")
            raise SourceError(f"unknown format {format!r}{why}; choose one of {', '.join(reg.classes)}")
        return reg.classes[format](path, **options)
    for name, reader in reg.classes.items():
        if not reg.builtin(name) and _claims(reader, path):
            return reader(path, **options)
    if path.is_dir():
        return detect_tiff_layout(path)(path, **options)
    if reg.classes["nd2"].sniff(path):
        return reg.classes["nd2"](path, **options)
    raise SourceError(f"{path}: not an ND2 file or a folder of TIFFs; single TIFF files are ingested as a folder plate")


def _claims(reader: type[PlateReader], path: Path) -> bool:
    """Whether a plug-in reader recognises ``path``; a plug-in whose sniff fails claims nothing (the built-ins decide)."""
    try:
        return bool(reader.sniff(path))
    except Exception:  # noqa: BLE001 - a broken plug-in must not stop the built-in formats
        return False
