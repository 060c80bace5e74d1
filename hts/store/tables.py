"""Per-field feature tables stored with the plate, as Parquet parts.

Workers write one part per field and run at ``PLATE.zarr/tables/cells/<run_id>/<well>_<field>.parquet``
(a plain folder inside the plate: Zarr and NGFF readers ignore it, and the
features travel with the plate they describe). The single catalog writer on the
client then loads the parts in bulk; nothing large goes through Dask. Parts are
written to a temporary name and renamed, so a killed worker never leaves half a part.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["cells_part_path", "write_part", "run_parts_dir", "remove_run_parts"]


def run_parts_dir(store_uri: str | Path, run_id: str) -> Path:
    return Path(store_uri) / "tables" / "cells" / run_id


def cells_part_path(store_uri: str | Path, run_id: str, well: str, field_index: int) -> Path:
    return run_parts_dir(store_uri, run_id) / f"{well}_{int(field_index)}.parquet"


def write_part(path: str | Path, table: pa.Table) -> Path:
    """Write ``table`` to ``path`` atomically (zstd-compressed Parquet)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def remove_run_parts(store_uri: str | Path, run_id: str) -> None:
    shutil.rmtree(run_parts_dir(store_uri, run_id), ignore_errors=True)
