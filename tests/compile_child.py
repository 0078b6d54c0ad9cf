"""Run by tests/test_compiled.py in a fresh process: load the demo engine with
the UNet compiled at 64x64 and the compile cache in the folder named on the
command line, wait for the compile, and print JSON with its seconds and the
cache files. The caller gives it its own TORCHINDUCTOR_CACHE_DIR, so only the
compile cache can make it faster.

Usage: python tests/compile_child.py CACHE_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.engine.engine import Engine, EngineOptions  # noqa: E402

engine = Engine.load(EngineOptions(model="demo", device="cpu", compile="on", compile_cache_dir=sys.argv[1]),
                     compile_sizes=((64, 64),))
assert engine.compiled.wait(timeout=1800), "no compile within 30 minutes"
print(json.dumps({"status": engine.compile_status, "seconds": sum(engine.compiled.seconds.values()),
                  "cpu_seconds": sum(engine.compiled.cpu_seconds.values()),
                  "files": [p.name for p in engine.compiled.cache.files()]}))
