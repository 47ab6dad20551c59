"""End to end in a real headless Chromium (Debian's, driven by Playwright; no browser
download): sign in, rank one prompt with the mouse and the keyboard, check the database."""

import shutil
import socket
import threading
import time

import pytest

from tunelab.feedback.store import LabelStore

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The closed network here refuses Chromium's background connections; these keep it quiet.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


@pytest.fixture
def server(db):
    import uvicorn

    from tunelab.feedback.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    instance = uvicorn.Server(uvicorn.Config(create_app(db), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    while not instance.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


def test_sign_in_rank_with_mouse_and_keyboard(server, db, tokens, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(server + "/label")
        assert page.url.endswith("/login")  # not signed in yet
        page.fill("#token", tokens["ann"])
        page.click("button[type=submit]")
        page.wait_for_url("**/label")
        assert "signed in as" in page.inner_text("header")
        # the script in a completion is shown, not run
        assert page.get_by_text("<script>alert(1)</script> & <b>bold</b>").count() == 1
        prompt_id = int(page.get_attribute("#ranking", "data-prompt-id"))
        cards = page.locator(".completion")
        shown = [int(cards.nth(i).get_attribute("data-id")) for i in range(cards.count())]
        page.screenshot(path=str(tmp_path / "labeling.png"), full_page=True)

        cards.nth(1).locator(".text").click()  # mouse: the 2nd shown is best
        page.keyboard.press("Digit1")  # keyboard: the 1st shown is next
        page.keyboard.press("Shift+Digit4")  # the 4th ties with it
        page.keyboard.press("x")  # the 3rd is not relevant
        page.keyboard.press("Digit3")
        assert cards.nth(2).get_attribute("class").split() == ["completion", "irrelevant"]
        page.keyboard.press("Enter")
        # a selector, not wait_for_function: its polling evals a string, which the page's CSP
        # (script-src 'self') refuses whenever the first check is not already true
        page.wait_for_selector(f"#ranking:not([data-prompt-id='{prompt_id}'])")
        assert "you: 1 judged" in page.inner_text("#progress")
        browser.close()

    store = LabelStore(db)
    ann = store.user_for_token(tokens["ann"])
    [judgement] = store.judgements(user=ann)
    assert judgement["prompt_id"] == prompt_id
    assert judgement["ranks"] == {str(shown[1]): 1, str(shown[0]): 2, str(shown[3]): 2, str(shown[2]): None}
    assert judgement["duration_ms"] > 0
