"""``python -m app.cli.bench_compiled``: one start of the compiled UNet
(app/bench/compiled.py) as one JSON line; app/bench/gpu_check.sh runs it twice."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.cli.bench_compiled",
                                description="time a start of the compiled UNet: cold, or from --cache-dir's cache")
    p.add_argument("--cache-dir", required=True, help="the compile cache folder (the same one for both starts)")
    p.add_argument("--model", default="demo", help="demo, sd21 (full SD 2.1 architecture, random weights) or a folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--runs", type=int, default=3, help="interleaved compiled/eager pairs timed after the compile")
    args, _ = p.parse_known_args(argv)  # gpu_check.sh's BENCH_ARGS may hold the benchmark's other flags
    from app.bench.compiled import measure

    print(json.dumps(measure(args.cache_dir, args.model, args.device, args.dtype, args.size, args.steps, args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
