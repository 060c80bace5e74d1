"""``python -m benchmarks NAME [options]``: run a benchmark and save its JSON under benchmarks/results/.

Benchmarks: ``ingest`` (memory and throughput as the plate grows), ``pipeline``
(end-to-end ingest -> segment -> query with baselines and scaling), ``cells``
(DuckDB bulk load and well_stats at millions of cells), ``field`` (per-field CPU
cost, hts vs scikit-image), ``engine-cost`` (a deep engine's weight folders on a
real-sized field: CPU seconds per field), ``network`` (deep-engine
network fields/s and fraction of peak FLOP/s), ``sweep`` (CPU per megapixel and per
object of every stage against field size and density, on real-derived fields), ``serve``
(the plate browser's latency: plate page and cells table on 10 million cells, 2048² field tiles),
``profiles`` (hts profile / activity / similar on 100 plates and 20 million cells, against pycytominer + copairs),
``watch`` (hts watch latency at an imager's rate: a field's last file to its cells in the catalog),
``lake`` (the DuckDB file vs a DuckLake catalog on PostgreSQL: cell load rate, well_stats, 1-4 writers at once).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import cells, engine_cost, field, ingest, lake, pipeline, profiles, serve, sweep, unet, watch


def _add_network(sub) -> None:
    def run(args):
        import torch

        if args.device.startswith("cuda") and not torch.cuda.is_available():
            msg = f"--device {args.device}: no CUDA GPU is present on this machine (torch.cuda.is_available() is False); nothing measured"
            print(msg)
            return {"benchmark": "network", "skipped": msg}
        from hts.compute.segment.backends import BACKENDS

        backends = list(BACKENDS) if args.backend == "all" else [b.strip() for b in args.backend.split(",")]
        explicit = [p for p in unet.PRECISIONS if p != "auto"]
        precisions = explicit if args.precision == "all" else [p.strip() for p in args.precision.split(",")]
        try:
            rows = unet.network_matrix(
                args.engine,
                backends=backends,
                precisions=precisions,
                device=args.device,
                size=args.size,
                batch=args.batch,
                on_row=lambda r: print(json.dumps(r), flush=True),
            )
        except ValueError as e:
            raise SystemExit(f"network: {e}") from None
        return {"benchmark": "network", **rows[0]} if len(rows) == 1 else {"benchmark": "network", "runs": rows}

    p = sub.add_parser("network", help="deep-engine network fields/s and fraction of peak FLOP/s")
    p.add_argument("--engine", default="nuclei")
    p.add_argument(
        "--backend",
        default="torch",
        help="torch, onnxruntime, tensorrt, a comma-separated list, or 'all' (combinations that cannot run here are reported as skipped)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        help="auto (the backend's default: fp16 on CUDA for torch and tensorrt), fp32, fp16, a list, or 'all' (fp32,fp16)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--json", default=None)
    p.set_defaults(func=run)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="name", required=True)
    ingest.add_parser(sub)
    pipeline.add_parser(sub)
    cells.add_parser(sub)
    lake.add_parser(sub)
    field.add_parser(sub)
    engine_cost.add_parser(sub)
    sweep.add_parser(sub)
    serve.add_parser(sub)
    profiles.add_parser(sub)
    watch.add_parser(sub)
    _add_network(sub)
    args = parser.parse_args()
    result = args.func(args)
    text = json.dumps(result, indent=2, default=str) + "\n"
    out = Path(__file__).parent / "results" / f"{result.get('benchmark', args.name)}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(f"saved {out}")
    if getattr(args, "json", None):
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
        print(f"saved {args.json}")


if __name__ == "__main__":
    main()
