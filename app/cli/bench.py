"""``python -m app bench`` (also ``python -m app.bench``): the benchmark's options."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import app.bench as bench
from app.bench import GPU_OPTIONS, MODES, PATHS, BenchConfig, child_main, client_main, to_markdown, write_section
from app.bench.fast import DEFAULT_FAST_MODES, parse_fast_mode
from app.models.speedups import SPEEDUPS, parse_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help="demo, sd21 (full SD 2.1 architecture, random weights) "
                   "or a diffusers folder (default: demo)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--size", type=int, help="image side in pixels (default: the model's native size)")
    p.add_argument("--runs", type=int, default=7, help="timed runs per path (default: 7)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    p.add_argument("--paths", default=",".join(PATHS), help="comma list of " + ", ".join(PATHS))
    p.add_argument("--options", help="comma list of speedup sets, '+' joins (default on CUDA: "
                   + ",".join(GPU_OPTIONS) + "; none elsewhere). Known: " + ", ".join(SPEEDUPS))
    p.add_argument("--option-runs", type=int, default=3, help="timed runs per speedup option (default: 3)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--poll", type=float, default=0.01,
                   help="HTTP client poll interval in seconds while the job is queued, in its first step "
                   "or past its last step (default: 0.01)")
    p.add_argument("--slow-poll", type=float, default=0.5,
                   help="HTTP client poll interval in seconds mid-run, as the web UI (default: 0.5)")
    p.add_argument("--no-long-poll", dest="long_poll", action="store_false",
                   help="HTTP client polls GET /api/jobs/<id> (see --poll, --slow-poll) instead of long-polling with ?wait=")
    p.add_argument("--preview-every", type=int, default=1,
                   help="the web app's PREVIEW_EVERY for the http/sdapi paths (default: 1, the app's default; 0: none)")
    p.add_argument("--modes", default="", help="comma list of engine modes to measure for time and peak VRAM, each in "
                   "a fresh process: " + ", ".join(MODES) + " (default: none)")
    p.add_argument("--vram-limit-gb", default="", help="comma list of VRAM caps in GB: the modes run again under each "
                   "(15: a Colab T4), through torch.cuda.set_per_process_memory_fraction (CUDA only)")
    p.add_argument("--fast-modes", default="", help="comma list of fast modes timed against the full run on the "
                   "engine, with their pixel difference: request fields joined by '+', deepcache=N, tome=R, steps=N, "
                   "sampler=NAME (e.g. deepcache=3+tome=0.5); 'default': " + ",".join(DEFAULT_FAST_MODES))
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the fresh-process load/first-image/peak-memory measurements")
    p.add_argument("--short", action="store_true", help="CI mode: demo model, 64x64, 2 steps, 2 runs")
    p.add_argument("--out", action="append", default=[], metavar="FILE",
                   help="write the report: .json (whole report) or .md (its section, replaced in place); repeatable")
    p.add_argument("--section", help="section name in a .md --out (default: <device>-<model>)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--client", help=argparse.SUPPRESS)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="speed and memory next to plain diffusers",
                              description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    # `python -m app bench` hands over only the parsed options; the report's command line is rebuilt from them.
    p.set_defaults(func=lambda args: run(args, argv_of(p, args)))


def build_parser() -> argparse.ArgumentParser:
    """``python -m app.bench`` (the benchmark's own entry point, also used for its child processes)."""
    p = argparse.ArgumentParser(prog="python -m app.bench", description=bench.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def argv_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The ``python -m app.bench`` options that give ``args``: those not at their default, in the parser's order."""
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        option = action.option_strings[-1]
        if action.nargs == 0:  # store_true, store_false
            argv.append(option)
        elif isinstance(value, list):  # append
            for item in value[len(action.default or []):]:
                argv += [option, str(item)]
        else:
            argv += [option, str(value)]
    return argv


def config_from_args(args: argparse.Namespace, argv: list[str]) -> BenchConfig:
    paths = tuple(p.strip() for p in args.paths.split(",") if p.strip())
    for name in paths:
        if name not in PATHS:
            raise ValueError(f"paths: unknown path {name!r} (known: {', '.join(PATHS)})")
    options = None
    if args.options is not None:
        options = tuple(o.strip() for o in args.options.split(",") if o.strip())
        for option in options:
            parse_option(option)
    for name in ("steps", "runs", "option_runs"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name}: must be at least 1 (got {getattr(args, name)})")
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"modes: unknown mode {mode!r} (known: {', '.join(MODES)})")
    try:
        limits = tuple(float(v) for v in args.vram_limit_gb.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"vram-limit-gb: expected numbers in GB, comma separated (got {args.vram_limit_gb!r})") from None
    if limits and not modes:
        raise ValueError("vram-limit-gb: needs --modes (the caps apply to the mode runs)")
    fast = tuple(m.strip() for m in args.fast_modes.split(",") if m.strip())
    if fast == ("default",):
        fast = DEFAULT_FAST_MODES
    for spec in fast:
        parse_fast_mode(spec)
    if args.size is not None and (args.size < 64 or args.size % 8):
        raise ValueError(f"size: must be a multiple of 8, at least 64 (got {args.size})")
    return BenchConfig(model=args.model, steps=args.steps, size=args.size, runs=args.runs, warmup=args.warmup,
                       paths=paths, options=options, option_runs=args.option_runs, device=args.device,
                       dtype=args.dtype, threads=args.threads, poll=args.poll, slow_poll=args.slow_poll, long_poll=args.long_poll,
                       preview_every=args.preview_every, memory=args.memory, modes=modes, vram_limits_gb=limits,
                       fast_modes=fast,
                       short=args.short, command=" ".join(["python -m app.bench", *map(shlex.quote, argv)]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return run(build_parser().parse_args(argv), argv)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Runs the benchmark (or, with ``--client``/``--child``, one of its subprocesses); ``argv``: its command line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.client:
        client_main(json.loads(args.client))
        return 0
    if args.child:
        child_main(json.loads(args.child), args.child_out)
        return 0
    try:
        cfg = config_from_args(args, argv)
        report = bench.run(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = to_markdown(report)
    print(text)
    for out in args.out:
        path = Path(out)
        if path.suffix.lower() == ".json":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2), encoding="utf-8")
        else:
            section = args.section or f"{report['device'].split(':')[0]}-{cfg.model if cfg.model in ('demo', 'sd21') else 'folder'}"
            write_section(path, section, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
