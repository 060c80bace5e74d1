"""Ingest a plate from Python and look at it: the same library calls the CLI makes.

Run from the repository root (after `make setup`):

    .venv/bin/python examples/ingest_and_inspect.py /tmp/hts-example

It writes a small synthetic 384-well ImageXpress plate, ingests it into an
OME-Zarr HCS store with a DuckDB catalog, attaches the platemap, then reads a
field back and queries per-well intensity from the catalog.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hts.catalog import Catalog, annotate
from hts.store import PlateStore
from hts.synth import make_plate
from hts.tasks.ingest import ingest


def main(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    plate = make_plate(workdir / "raw", format="imagexpress", plate_type=384, wells="A01:D06", fields=2, shape=(256, 256))
    report = ingest(plate.source, out=workdir / "plate.zarr", db=workdir / "hts.duckdb", scheduler="threads")
    print(f"{report.status}: {report.fields_written} fields of {report.wells} wells in {report.seconds:.1f} s -> {report.store}")

    catalog = Catalog(workdir / "hts.duckdb")
    record = catalog.find_plate(report.name)
    annotate(catalog, record, plate.platemap)

    field = PlateStore(report.store).read_field("B/03", 1)  # lazy zarr array (t, c, z, y, x)
    print("field B03/1:", field.shape, field.dtype, "DAPI mean", float(field[0, 0, 0].mean()))

    rows = catalog.query(
        """
        SELECT s.well, pm.role, pm.compound, pm.concentration, round(avg(s.mean), 1) AS gfp_mean
        FROM field_channel_stats s
        JOIN channels c USING (plate_id, channel_index)
        LEFT JOIN platemap pm USING (plate_id, well)
        WHERE c.name = 'GFP'
        GROUP BY ALL ORDER BY s.well LIMIT 8
        """
    )
    for r in rows:
        print(r)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "hts-example"))
