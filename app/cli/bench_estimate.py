"""``python -m app.cli.bench_estimate``: the T4 estimate per fast mode (app/bench/estimate.py, docs/speed.md)."""
from __future__ import annotations

import argparse
import json
import sys

from app.bench import estimate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.cli.bench_estimate", description=estimate.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--json", action="store_true", help="the whole report as JSON instead of the Markdown table")
    args = p.parse_args(argv)
    report = estimate.estimate(args.size, args.steps)
    print(json.dumps(report, indent=1) if args.json else estimate.to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
