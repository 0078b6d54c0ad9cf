"""Wildcards and variants typed on the page (issue #27), in a real Chromium: each image's
prompt is drawn from its seed, the same seed draws the same prompt again, and the
gallery shows the drawn prompt with the template kept in its parameters."""
from __future__ import annotations

import pytest

from app.engine.dynamic_prompts import WildcardFiles, resolve
from browser_helpers import submit

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TEMPLATE = "a {red|green|blue|gold|pink|teal} __pets__"


def _gallery_infotexts(page, url: str) -> list[str]:
    page.goto(url + "/gallery")
    page.wait_for_selector("#gallery .tile")
    return page.eval_on_selector_all("#gallery .tile pre.infotext", "nodes => nodes.map(n => n.textContent)")


def test_the_same_seed_draws_the_same_prompt_and_the_gallery_keeps_the_template(serve, page, tmp_path):
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "pets.txt").write_text("cat\n{small|big} dog\nparrot\n")
    server = serve(WILDCARD_DIR=str(folder))
    files = WildcardFiles(folder)
    drawn = {}
    for seed in (7, 8, 7):
        page.goto(server.url + "/")
        page.wait_for_selector("#model-status[data-state=ready]")
        submit(page, TEMPLATE, seed=seed, steps=2)
        page.wait_for_selector("#results figure img, #form-error:not([hidden]), .field-error:not([hidden])")
        assert not page.is_visible("#form-error"), page.text_content("#form-error")
        page.wait_for_selector("#results .copy-infotext")
        drawn.setdefault(seed, []).append(resolve("prompt", TEMPLATE, seed, files, 1000))

    texts = _gallery_infotexts(page, server.url)
    assert len(texts) == 3, texts
    # Each image's first line is the prompt its seed draws (newest first: 7, 8, 7), the template kept below.
    for text, seed in zip(texts, (7, 8, 7)):
        first = text.splitlines()[0]
        assert first == drawn[seed][0], (seed, text)
        assert "{" not in first and "__" not in first
        assert f"Seed: {seed}" in text and f"Template: {TEMPLATE}" in text
    assert texts[0].splitlines()[0] == texts[2].splitlines()[0]
