"""The DuckDB plate catalog."""

from hts.catalog.db import Catalog, PlateRecord
from hts.catalog.platemap import annotate, read_platemap

__all__ = ["Catalog", "PlateRecord", "annotate", "read_platemap"]
