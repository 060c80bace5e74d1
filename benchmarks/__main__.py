"""``python -m benchmarks NAME [options]``: run a benchmark and save its JSON under benchmarks/results/."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import ingest


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="name", required=True)
    ingest.add_parser(sub)
    args = parser.parse_args()
    result = args.func(args)
    out = Path(__file__).parent / "results" / f"{args.name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
