"""One error hierarchy for hts.

Every error hts raises on bad input derives from :class:`HtsError`. Its message
is a single line that names the file, row or object at fault and what is wrong;
the CLI prints exactly that line (no traceback) and exits non-zero.
"""

from __future__ import annotations


class HtsError(Exception):
    """Base class: a user-facing, one-line error."""

    exit_code = 1

    def __init__(self, message: str):
        # Keep messages on one line whatever the caller passed.
        super().__init__(" ".join(str(message).split()))


class SourceError(HtsError):
    """An acquisition source (ND2 file, TIFF folder) is unreadable, corrupt or inconsistent."""


class PlatemapError(HtsError):
    """A platemap (per-well treatment table) has a bad row or column."""


class StoreError(HtsError):
    """The OME-Zarr store is missing, foreign or inconsistent."""


class CatalogError(HtsError):
    """The DuckDB catalog is missing, locked, from a newer hts, or lacks a plate."""


class ConfigError(HtsError):
    """A setting (option, environment variable or config file) is invalid."""


class ClusterError(HtsError):
    """The Dask scheduler could not be reached or a worker failed."""


class EngineError(HtsError):
    """Unknown engine, bad parameters, missing channels, or unusable model weights / backend."""


class ImageFileError(SourceError):
    """A single image file (training images, label images) is missing, unreadable or of an unknown kind."""
