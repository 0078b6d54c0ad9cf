"""Prompt styles in the page, in headless Chromium against a live server:
pick a style and generate, manage styles with the keyboard, and axe (WCAG
AA) on the styles box and its editor in both colour schemes."""
from __future__ import annotations

import csv

import pytest

from browser_helpers import axe_problems, submit

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CSV = 'name,prompt,negative_prompt\ncinematic,"cinematic still of {prompt}, film grain",cartoon\n'


@pytest.fixture
def styles_file(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


def _my_jobs(page) -> list[dict]:  # noqa: F811
    return page.evaluate("() => fetch('/api/jobs').then(r => r.json()).then(d => d.jobs)")


def test_pick_a_style_generate_and_manage_styles(serve, page, styles_file):  # noqa: F811
    server = serve(STYLES=str(styles_file))
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.get_by_role("checkbox", name="cinematic").check()
    page.fill("#prompt", "a fox")
    assert "cinematic still of a fox, film grain" in page.inner_text("#styles-picked")
    submit(page, "a fox", width=64, height=64, steps=2)
    page.wait_for_selector("#job[data-state=done]")
    params = _my_jobs(page)[0]["params"]
    assert (params["prompt"], params["negative_prompt"], params["styles"]) == (
        "cinematic still of a fox, film grain", "cartoon", ["cinematic"])
    # Reusing the job brings back the styled prompt that ran, and unpicks the style (or it would apply twice).
    page.click("#reuse")
    assert page.input_value("#prompt") == "cinematic still of a fox, film grain"
    assert not page.get_by_role("checkbox", name="cinematic").is_checked()
    page.fill("#prompt", "a fox")

    # The editor, by keyboard: open it, write a new style, see the preview, save it.
    page.focus("#styles-manage")
    page.keyboard.press("Enter")
    assert page.get_attribute("#styles-manage", "aria-expanded") == "true"
    page.wait_for_selector("#styles-editor:visible")
    page.focus("#style-name")
    page.keyboard.type("watercolor")
    page.keyboard.press("Tab")
    page.keyboard.type("watercolor painting")
    assert "\u201ca fox, watercolor painting\u201d" in page.inner_text("#style-preview")
    page.focus("#style-save")
    page.keyboard.press("Enter")
    page.wait_for_selector("#style-note:has-text('Added watercolor.')")
    assert page.get_by_role("checkbox", name="watercolor").is_visible()
    with open(styles_file, newline="", encoding="utf-8") as fh:
        assert list(csv.DictReader(fh))[-1] == {"name": "watercolor", "prompt": "watercolor painting",
                                                "negative_prompt": ""}
    # A bad name shows the server's message; nothing is written.
    page.select_option("#style-pick", "")
    page.fill("#style-name", "a/b")
    page.click("#style-save")
    page.wait_for_selector("#style-error:visible")
    assert "name" in page.inner_text("#style-error")
    # Edit and delete the new style.
    page.select_option("#style-pick", "watercolor")
    page.fill("#style-prompt", "{prompt} in watercolor")
    page.click("#style-save")
    page.wait_for_selector("#style-note:has-text('Saved watercolor.')")
    page.click("#style-delete")
    page.wait_for_selector("#style-note:has-text('Deleted watercolor.')")
    assert page.get_by_role("checkbox", name="watercolor").count() == 0
    names = [s["name"] for s in page.evaluate("() => fetch('/sdapi/v1/prompt-styles').then(r => r.json())")]
    assert names == ["cinematic"]


def test_styles_box_and_editor_pass_axe(serve, scheme_page, styles_file):  # noqa: F811
    page = scheme_page  # noqa: F811
    server = serve(STYLES=str(styles_file))
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.get_by_role("checkbox", name="cinematic").check()
    page.fill("#prompt", "a fox")
    page.click("#styles-manage")
    page.select_option("#style-pick", "cinematic")
    page.fill("#style-name", "bad/name")
    page.click("#style-save")
    page.wait_for_selector("#style-error:visible")
    problems = axe_problems(page, "styles editor")
    assert not problems, f"{page.scheme} scheme:\n" + "\n".join(problems)
