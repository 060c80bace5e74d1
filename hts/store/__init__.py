"""The OME-Zarr HCS plate store.

Its names are imported on first use (PEP 562): :mod:`hts.store.location`, which the workspace
configuration needs, must not pull in zarr (0.3-0.5 s) for commands that only read the catalog.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["NGFF_VERSION", "PlateStore", "downsample2", "pyramid_levels"]

if TYPE_CHECKING:
    from hts.store.ngff import NGFF_VERSION, PlateStore, downsample2, pyramid_levels


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hts.store import ngff

        return getattr(ngff, name)
    raise AttributeError(f"module 'hts.store' has no attribute {name!r}")
