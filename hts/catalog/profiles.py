"""Profile tables of the catalog (``schemas/catalog/008_profiles.sql``): the per-well
aggregation of cells (one SQL query inside DuckDB), and storing / reading profile sets,
consensus profiles and activity. Rows go in as Arrow tables, never one by one.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pyarrow as pa

from hts.catalog.cells import cells_columns
from hts.catalog.db import Catalog, _insert_arrow, sql_ident, sql_literal
from hts.errors import CatalogError

__all__ = [
    "KEY_COLUMNS",
    "is_profile_feature",
    "profile_feature_columns",
    "aggregate_wells",
    "store_profile_set",
    "profile_set_exists",
    "make_current",
    "find_profile_set",
    "load_features",
    "selected_mask",
    "load_profiles",
    "load_consensus",
    "store_activity",
    "load_activity",
    "activity_rank",
    "as_matrix",
]

#: Key columns of ``cells`` (identifiers, never features).
KEY_COLUMNS = ("plate_id", "run_id", "well", "field_index", "t", "object_id", "nucleus_id")
# Identifiers and positions that carry a compartment prefix: where an object is in the field
# (centres, bounding-box corners), object numbers and parents say nothing about phenotype.
_METADATA = re.compile(
    r"(^Location_|_Location_|_Center_|_BoundingBoxM(in|ax)imum_|ObjectNumber|_Number_Object_Number|(^|_)Parent_)"
)


def is_profile_feature(name: str) -> bool:
    """Whether a ``cells`` column is a phenotype feature (not a key, identifier or position).

    >>> [is_profile_feature(c) for c in ("Nuclei_AreaShape_Area", "Nuclei_AreaShape_Center_X",
    ...                                  "Location_Center_Y", "object_id", "Nuclei_ObjectNumber")]
    [True, False, False, False, False]
    """
    return name not in KEY_COLUMNS and not _METADATA.search(name)


def profile_feature_columns(catalog: Catalog) -> list[str]:
    """The ``cells`` columns that profiles aggregate, in table order."""
    with catalog.connect(read_only=True) as con:
        return [c for c in cells_columns(con) if is_profile_feature(c)]


def aggregate_wells(catalog: Catalog, run_ids: list[str], features: list[str], operation: str = "median") -> pa.Table:
    """Per-well ``operation`` (median or mean) of ``features`` over the cells of ``run_ids``, with the platemap.

    One query inside DuckDB (no rows through Python); every time point pooled. Columns:
    plate_id, plate, run_id, well, role, compound, concentration, unit, n_cells, then the features.
    """
    if operation not in ("median", "mean"):
        raise CatalogError(f"unknown aggregation {operation!r}; choose median or mean")
    fn = "median" if operation == "median" else "avg"
    aggs = ", ".join(f"{fn}(CAST(c.{sql_ident(f)} AS DOUBLE)) AS {sql_ident(f)}" for f in features)
    runs = ", ".join(sql_literal(r) for r in run_ids)
    sql = f"""
        WITH agg AS (
            SELECT c.plate_id, c.run_id, c.well, count(*) AS n_cells{", " + aggs if aggs else ""}
            FROM cells c WHERE c.run_id IN ({runs})
            GROUP BY c.plate_id, c.run_id, c.well
        )
        SELECT a.plate_id, p.name AS plate, a.run_id, a.well, m.role, m.compound, m.concentration, m.unit,
               a.* EXCLUDE (plate_id, run_id, well)
        FROM agg a JOIN plates p ON p.plate_id = a.plate_id
        LEFT JOIN platemap m ON m.plate_id = a.plate_id AND m.well = a.well
        ORDER BY p.name, a.well
    """
    with catalog.connect(read_only=True) as con:
        return con.sql(sql).to_arrow_table()


def as_matrix(table: pa.Table, columns: list[str]) -> np.ndarray:
    """Columns of an Arrow table as a float64 matrix (rows x columns), NULL as NaN."""
    if not columns:
        return np.zeros((table.num_rows, 0))
    return np.column_stack([table.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False) for c in columns]).astype(
        np.float64
    )


def _lists(x: np.ndarray) -> pa.ListArray:
    n, k = x.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32) if n else np.zeros(1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(x.ravel(), type=pa.float64()))


def store_profile_set(
    catalog: Catalog,
    row: dict[str, Any],
    features: list[str],
    selected: np.ndarray,
    reasons: list[str | None],
    meta: pa.Table,
    aggregated: np.ndarray,
    normalized: np.ndarray,
    consensus_meta: pa.Table,
    consensus: np.ndarray,
) -> None:
    """Write one profile set (replacing a set with the same id) in one transaction."""
    sid = row["profile_set_id"]
    feats = pa.table({
        "profile_set_id": [sid] * len(features), "ordinal": pa.array(range(1, len(features) + 1), pa.int32()),
        "feature": features, "selected": pa.array(selected.tolist(), pa.bool_()), "reason": reasons,
    })  # fmt: skip
    prof = meta.append_column("aggregated", _lists(aggregated)).append_column("normalized", _lists(normalized))
    prof = prof.add_column(0, "profile_set_id", pa.array([sid] * prof.num_rows, pa.string()))
    cons = consensus_meta.append_column("normalized", _lists(consensus))
    cons = cons.add_column(0, "profile_set_id", pa.array([sid] * cons.num_rows, pa.string()))
    head = pa.table({
        k: [json.dumps(v) if k in ("recipe", "plates", "warnings") else v] for k, v in row.items()
    })  # fmt: skip
    with catalog.connect() as con:
        con.execute("BEGIN")
        try:
            for t in ("activity", "consensus", "profiles", "profile_features", "profile_sets"):
                con.execute(f"DELETE FROM {t} WHERE profile_set_id = ?", [sid])
            _insert_arrow(con, "profile_sets", head)
            _insert_arrow(con, "profile_features", feats)
            _insert_arrow(con, "profiles", prof)
            _insert_arrow(con, "consensus", cons)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def profile_set_exists(catalog: Catalog, profile_set_id: str) -> bool:
    return bool(catalog.query("SELECT 1 FROM profile_sets WHERE profile_set_id = ?", [profile_set_id]))


def make_current(catalog: Catalog, profile_set_id: str) -> None:
    """Make a stored set the latest (what activity, similar and export use by default)."""
    with catalog.connect() as con:
        con.execute("UPDATE profile_sets SET current_at = current_timestamp WHERE profile_set_id = ?", [profile_set_id])


def find_profile_set(catalog: Catalog, ref: str | None = None) -> dict[str, Any]:
    """A profile set by id (or id prefix); the latest one when ``ref`` is None."""
    if ref:
        rows = catalog.query(
            "SELECT * FROM profile_sets WHERE starts_with(profile_set_id, ?) ORDER BY created_at DESC", [ref]
        )
        if len(rows) > 1:
            raise CatalogError(f"profile set {ref!r} is ambiguous: {', '.join(r['profile_set_id'][:12] for r in rows)}")
    else:
        rows = catalog.query("SELECT * FROM profile_sets ORDER BY current_at DESC LIMIT 1")
    if not rows:
        what = f"no profile set {ref!r}" if ref else "no profiles yet"
        raise CatalogError(f"{catalog.name}: {what} (run `hts profile` first)")
    row = rows[0]
    for k in ("recipe", "plates", "warnings"):
        if isinstance(row[k], str):
            row[k] = json.loads(row[k])
    return row


def load_features(catalog: Catalog, profile_set_id: str) -> pa.Table:
    """The features of a profile set in array order: ordinal, feature, selected, reason."""
    with catalog.connect(read_only=True) as con:
        return con.sql(
            "SELECT ordinal, feature, selected, reason FROM profile_features WHERE profile_set_id = ? ORDER BY ordinal",
            params=[profile_set_id],
        ).to_arrow_table()


def selected_mask(features: pa.Table) -> np.ndarray:
    """Which features (as :func:`load_features` lists them) feature selection kept."""
    return np.asarray(features.column("selected").to_pylist(), dtype=bool)


def load_profiles(catalog: Catalog, profile_set_id: str) -> tuple[pa.Table, np.ndarray, np.ndarray, pa.Table]:
    """(well metadata, aggregated matrix, normalised matrix, features table) of a profile set."""
    feats = load_features(catalog, profile_set_id)
    with catalog.connect(read_only=True) as con:
        t = con.sql(
            "SELECT * EXCLUDE (profile_set_id) FROM profiles WHERE profile_set_id = ? ORDER BY plate, well",
            params=[profile_set_id],
        ).to_arrow_table()
    k = feats.num_rows
    agg = _matrix(t.column("aggregated"), k)
    norm = _matrix(t.column("normalized"), k)
    return t.drop_columns(["aggregated", "normalized"]), agg, norm, feats


def _matrix(col: pa.ChunkedArray, k: int) -> np.ndarray:
    flat = col.combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    return flat.reshape(-1, k) if k else np.zeros((len(col), 0))


def load_consensus(catalog: Catalog, profile_set_id: str) -> tuple[pa.Table, np.ndarray]:
    with catalog.connect(read_only=True) as con:
        k = con.execute("SELECT count(*) FROM profile_features WHERE profile_set_id = ?", [profile_set_id]).fetchall()[
            0
        ][0]
        t = con.sql(
            "SELECT * EXCLUDE (profile_set_id) FROM consensus WHERE profile_set_id = ? "
            "ORDER BY compound, concentration",
            params=[profile_set_id],
        ).to_arrow_table()
    return t.drop_columns(["normalized"]), _matrix(t.column("normalized"), k)


def store_activity(catalog: Catalog, profile_set_id: str, rows: pa.Table) -> None:
    """Replace the activity of a profile set."""
    rows = rows.add_column(0, "profile_set_id", pa.array([profile_set_id] * rows.num_rows, pa.string()))
    with catalog.connect() as con:
        con.execute("BEGIN")
        try:
            con.execute("DELETE FROM activity WHERE profile_set_id = ?", [profile_set_id])
            _insert_arrow(con, "activity", rows)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def activity_rank(row: dict[str, Any]) -> tuple:
    """Sort key of activity rows: hits first, then by q-value, then by mAP (highest first)."""
    return (not row["hit"], row["q_value"], -row["mean_average_precision"])


def load_activity(catalog: Catalog, profile_set_id: str) -> list[dict[str, Any]]:
    """A profile set's activity rows in :func:`activity_rank` order."""
    return catalog.query(
        "SELECT * EXCLUDE (profile_set_id) FROM activity WHERE profile_set_id = ? "
        "ORDER BY hit DESC, q_value, mean_average_precision DESC, compound, concentration",
        [profile_set_id],
    )
