"""The HTML report: self-contained, labels escaped, the before/after view coloured the
right way, and it renders in headless Chromium with no console errors and its plots."""

import re
import shutil

import pytest

from tunelab.evaluation.html_report import render_html

RESULTS = {
    "base": {"cb": {"n": 56, "acc": 0.5, "acc_ci": [0.4, 0.6], "ece_10": 0.2, "robustness": 0.4, "fairness": 0.45},
             "bbq": {"n": 100, "acc": 0.4, "acc_ci": [0.3, 0.5], "ece_10": 0.1, "bias_ambig": 0.1}},
    "runs/<b>lora</b>/final": {"cb": {"n": 56, "acc": 0.45, "acc_ci": [0.35, 0.55], "ece_10": 0.1, "robustness": 0.4,
                                      "fairness": 0.5},
                               "bbq": {"n": 100, "acc": 0.42, "acc_ci": [0.32, 0.52], "ece_10": 0.12, "bias_ambig": -0.2}},
}


def test_page_is_self_contained_and_escaped():
    page = render_html(RESULTS, {"format": "tunelab", "shots": 0, "seed": 0})
    assert "<b>lora</b>" not in page and "&lt;b&gt;lora&lt;/b&gt;" in page
    assert "<script" not in page and not re.search(r"(src|href)=['\"]https?:", page)
    assert page.count("data:image/png;base64,") == 2
    delta = page[page.index("Against base"):]
    assert "<td class=worse>-5.0</td>" in delta  # accuracy fell
    assert "<td class=better>-10.0</td>" in delta  # ECE fell: better
    assert "<td class=worse>+0.100</td>" not in delta and "<td class=worse>-0.300</td>" in delta  # |bias| grew


@pytest.mark.slow
def test_page_renders_in_chromium(tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"  # make test installs it, as for the labeling test
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "report.html"
    page_file.write_text(render_html(RESULTS, {"format": "lm-eval"}))
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri())
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) == 2 and all(w > 100 for w in widths)  # both plots decoded
        assert page.locator("table").count() == 2 and "runs/<b>lora</b>/final" in page.inner_text("body")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
