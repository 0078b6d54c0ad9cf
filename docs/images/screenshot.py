"""Retake docs/images/generate.png, README's screenshot: the generate page in
Chromium at 1366x900 after one image from the offline demo model.

    python docs/images/screenshot.py   # needs /usr/bin/chromium and playwright (the browser tests' set-up)
"""
from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "generate.png"
sys.path.insert(0, str(ROOT))


def main() -> None:
    from app import create_app
    from app.engine.engine import Engine, EngineOptions
    from app.web.server import ServerHandle

    engine = Engine.load(EngineOptions(model="demo", device="cpu"))
    with tempfile.TemporaryDirectory() as instance:
        server = ServerHandle(create_app({"INSTANCE": instance, "MODEL": "demo", "ENGINE": engine}),
                              host="127.0.0.1", port=0).start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
                page = browser.new_page(viewport={"width": 1366, "height": 900}, color_scheme="light")
                page.set_default_timeout(120_000)
                page.goto(server.url + "/")
                page.wait_for_selector("#model-status[data-state=ready]")
                page.fill("#prompt", "a lighthouse on a cliff at dusk, oil painting")
                page.fill("#negative_prompt", "blurry")
                for field, value in {"width": 256, "height": 256, "steps": 8, "seed": 1234}.items():
                    page.fill(f"#{field}", str(value))
                page.click("#generate")
                page.wait_for_selector("#job[data-state=done]")
                page.evaluate("window.scrollTo(0, 0)")  # the click scrolled down to Generate
                page.wait_for_function("() => !document.getElementById('queue-size').textContent"  # the slower polls
                                       " && document.getElementById('queue-strip').textContent.includes('empty')")
                png = page.screenshot()
                browser.close()
        finally:
            server.stop()
    # A palette keeps the file small (the README's image, well under 200 KB).
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    image.save(OUT, optimize=True)
    print(f"{OUT}: {OUT.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
