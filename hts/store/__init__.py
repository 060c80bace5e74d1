"""The OME-Zarr HCS plate store."""

from hts.store.ngff import NGFF_VERSION, PlateStore, downsample2, pyramid_levels

__all__ = ["NGFF_VERSION", "PlateStore", "downsample2", "pyramid_levels"]
