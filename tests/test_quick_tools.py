"""The form's quick tools in a real browser: aspect-ratio presets, swapping
width and height, a PNG dropped or pasted onto the form filling every
setting from its metadata, the prompt history, copying the parameters."""
from __future__ import annotations

import base64

import pytest

from browser_helpers import CHROMIUM, goto_with_page_config, submit

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")]


def test_aspect_presets_keep_the_native_pixel_count(serve, page):  # noqa: F811
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    native = int(page.input_value("#width")) * int(page.input_value("#height"))
    page.click("[data-aspect='16:9']")
    w, h = int(page.input_value("#width")), int(page.input_value("#height"))
    assert w % 8 == 0 and h % 8 == 0 and w > h
    assert abs(w / h - 16 / 9) < 0.1 and abs(w * h - native) / native < 0.05
    page.click("#swap-size")
    assert (int(page.input_value("#width")), int(page.input_value("#height"))) == (h, w)
    # On SD 2.1's 768x768, 16:9 is 1024x576 and 2:3 is 632x944-ish; 1:1 is back to 768x768.
    def sd21(config):
        config["defaults"].update(width=768, height=768)
        config["limits"].update(max_width=2048, max_height=2048)

    goto_with_page_config(page, server.url + "/", sd21)
    page.click("[data-aspect='16:9']")
    assert (page.input_value("#width"), page.input_value("#height")) == ("1024", "576")
    page.click("[data-aspect='9:16']")
    assert (page.input_value("#width"), page.input_value("#height")) == ("576", "1024")
    page.click("[data-aspect='1:1']")
    assert (page.input_value("#width"), page.input_value("#height")) == ("768", "768")


DROP = """async ([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type: "image/png"}));
  const target = document.getElementById("steps");
  target.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
  target.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""


PASTE = """async ([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type: "image/png"}));
  document.body.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true}));
}"""


def test_a_png_dropped_on_the_form_fills_every_setting(serve, page, tmp_path):  # noqa: F811
    from PIL import Image

    from app.engine.metadata import infotext, save_png

    text = infotext(prompt="a castle on a hill, oil", negative_prompt="blurry", steps=17, sampler="Euler a",
                    cfg_scale=6.5, seed=123456, width=96, height=64, model="demo")
    png = save_png(Image.new("RGB", (96, 64)), tmp_path / "made-here.png", text)
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.evaluate(DROP, [base64.b64encode(png.read_bytes()).decode(), "made-here.png"])
    page.wait_for_function("() => document.getElementById('prompt').value === 'a castle on a hill, oil'")
    assert page.input_value("#negative_prompt") == "blurry"
    assert page.input_value("#seed") == "123456"
    assert (page.input_value("#width"), page.input_value("#height")) == ("96", "64")
    assert page.input_value("#steps") == "17" and page.input_value("#guidance_scale") == "6.5"
    assert page.input_value("#scheduler") == "Euler a"
    assert "Settings read from made-here.png" in page.text_content("#form-note")

    # Pasting works the same way, anywhere on the page.
    page.fill("#prompt", "")
    page.evaluate(PASTE, [base64.b64encode(png.read_bytes()).decode(), "pasted.png"])
    page.wait_for_function("() => document.getElementById('prompt').value === 'a castle on a hill, oil'")
    assert "Settings read from pasted.png" in page.text_content("#form-note")

    # A PNG without settings says so, and changes nothing.
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    page.evaluate(DROP, [base64.b64encode(plain.read_bytes()).decode(), "plain.png"])
    page.wait_for_selector("#form-error:visible")
    assert "plain.png holds no generation settings" in page.text_content("#form-error")
    assert page.input_value("#prompt") == "a castle on a hill, oil"


def test_prompt_history_is_kept_and_searchable(serve, page):  # noqa: F811
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    for prompt in ("a red fox", "a blue whale"):
        submit(page, prompt, width=64, height=64, steps=2)
        page.wait_for_function("p => document.getElementById('job-params').textContent.includes(p)", arg=prompt)
    page.reload()  # kept in this browser, across reloads
    page.click("#history-toggle")
    assert page.get_attribute("#history-toggle", "aria-expanded") == "true"
    assert page.eval_on_selector_all(".history-item", "b => b.map(x => x.textContent)") == ["a blue whale", "a red fox"]
    page.fill("#history-search", "fox")
    assert page.eval_on_selector_all(".history-item", "b => b.map(x => x.textContent)") == ["a red fox"]
    page.click(".history-item")
    assert page.input_value("#prompt") == "a red fox" and page.is_hidden("#history")


def test_copy_parameters_puts_the_infotext_on_the_clipboard(serve, browser):  # noqa: F811
    server = serve()
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    tab = context.new_page()
    try:
        tab.goto(server.url + "/")
        submit(tab, "copy me", width=64, height=64, steps=2, seed=77)
        tab.wait_for_selector("#results .copy-infotext")
        tab.click("#results .copy-infotext")
        tab.wait_for_function("() => document.querySelector('#results .copy-infotext').textContent === 'Copied'")
        copied = tab.evaluate("navigator.clipboard.readText()")
        assert copied.startswith("copy me\n") and "Seed: 77" in copied
    finally:
        context.close()
