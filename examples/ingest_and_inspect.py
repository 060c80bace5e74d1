"""A whole plate from Python, with the public API only (``import hts``).

Run from the repository root (after `make setup`):

    .venv/bin/python examples/ingest_and_inspect.py /tmp/hts-example

It writes a small synthetic 384-well ImageXpress plate (24 wells, 2 fields each),
ingests it into an OME-Zarr HCS store with a DuckDB catalog, attaches the
platemap, segments and measures every cell, checks the assay window (Z') and
queries per-well numbers, then writes the plate report. Everything is a library
call with the workspace passed in: no environment variable or hts.toml is read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hts
from hts.synth import make_plate  # the synthetic test-plate generator (not needed with real data)


def main(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    raw = make_plate(workdir / "raw", format="imagexpress", plate_type=384, wells="A01:D06", fields=2, shape=(256, 256))

    ws = hts.Workspace.at(workdir, scheduler="threads")  # workdir/hts.duckdb + workdir/plates/
    plate = hts.ingest(raw.source, ws)
    rep = plate.ingest_report
    print(f"{rep.status}: {rep.fields_written} fields of {rep.wells} wells in {rep.seconds:.1f} s -> {plate.store}")
    print("annotated wells:", plate.annotate(raw.platemap))

    image = plate.image("B03", 1)  # (channels, z, y, x) of field 1 of well B03
    print("field B03/1:", image.shape, image.dtype, "DAPI mean", round(float(image[0].mean()), 1))

    run = hts.segment(plate, engine="classic")
    print(f"{run.status}: {run.objects} in {run.seconds:.1f} s, {run.cells} cells measured")
    cells = plate.cells()  # polars DataFrame, one row per cell
    print(
        "cells:",
        cells.height,
        "rows,",
        cells.width,
        "columns; e.g.",
        [c for c in cells.columns if "AreaShape_Area" in c][:2],
    )

    (qc,) = hts.qc(plate)
    print(f"Z' {qc.z_prime:.2f} ({qc.quality}), SSMD {qc.ssmd:.2f}")
    wells = hts.query(
        "SELECT well, role, compound, concentration, cell_count FROM well_stats ORDER BY well LIMIT 5", ws
    )
    print(wells)
    out = hts.report(plate, out=workdir / "report", n_overlays=2)
    print("report:", out.html)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "hts-example"))
