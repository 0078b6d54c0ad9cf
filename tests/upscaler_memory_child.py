"""Run by tests/test_upscalers.py in a fresh process: a 4x upscale of a 768x768
image with a tiny Real-ESRGAN Compact model (the real architecture, random
weights) through the registry, in tiles. Prints the growth of the peak RSS
over the process's RSS just before the upscale, in MB (Linux's VmHWM)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/self/status")


def main(folder: str, tile: int = 192) -> None:
    import numpy as np
    from PIL import Image

    from app.engine import upscalers
    from app.engine.types import Limits
    from app.engine.upscale import upscale

    upscalers.configure(folder, tile=tile)
    image = Image.fromarray((np.random.default_rng(0).random((768, 768, 3)) * 255).astype(np.uint8))
    upscale(image.resize((32, 32)), scale=4, upscaler="tiny-compact")  # imports, model load: not the upscale's
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = rss_kb("VmRSS")
    out = upscale(image, scale=4, upscaler="tiny-compact", limits=Limits(max_width=4096, max_height=4096,
                                                                          max_pixels=4096 * 4096))
    peak = rss_kb("VmHWM")
    print(json.dumps({"size": list(out.size), "peak_growth_mb": (peak - before) / 1024}))


if __name__ == "__main__":
    main(sys.argv[1], *(int(arg) for arg in sys.argv[2:3]))
