"""The web chat page in headless Chromium (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import os
import re
import time

import httpx
import pytest

from bloomchat.infer.server import BackgroundServer, create_app
from infer_helpers import scripted_chat_model

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
EVIL = (' Here is **bold** and `code`:\n```python\nprint("<b>hi</b>")\n```\n'
        '<script>window.__xss=1</script><img src=x onerror="window.__xss=2"> '
        '[safe](https://example.org) [evil](javascript:window.__xss=3)\n- 北京\n- Paris')


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1200, "height": 800})
    pg = ctx.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    ctx.close()


def expect(x):
    from playwright.sync_api import expect as _expect  # waits with selectors, not eval: the page's CSP forbids eval

    return _expect(x)


def _send(page, text):
    page.fill("#input", text)
    page.press("#input", "Enter")


def test_infer_web_renders_markdown_safely(page, tiny_tokenizer, tmp_path):
    cm = scripted_chat_model(tiny_tokenizer, EVIL, delay=0.002, name="web")
    try:
        with BackgroundServer(create_app(cm, guards=None)) as srv:
            page.goto(srv.url + "/")
            expect(page).to_have_title(re.compile("^web"))
            _send(page, "Show me <b>code</b>")
            page.wait_for_selector(".msg.assistant .meta", timeout=20000)
            msgs = page.locator("#messages")
            # the user's text is shown as typed, not as HTML
            assert page.locator(".msg.user").inner_text() == "Show me <b>code</b>"
            # Markdown became elements ...
            assert page.locator(".msg.assistant strong").inner_text() == "bold"
            assert page.locator(".msg.assistant pre code").inner_text() == 'print("<b>hi</b>")'
            assert page.locator(".msg.assistant li").all_inner_texts() == ["北京", "Paris"]
            assert page.locator(".msg.assistant a").get_attribute("href") == "https://example.org"
            # ... but model text never became HTML or script
            assert msgs.locator("script, img, b").count() == 0
            assert "<script>window.__xss=1</script>" in page.locator(".msg.assistant").inner_text()
            time.sleep(0.2)
            assert page.evaluate("window.__xss") is None and page.dialogs == []
            page.screenshot(path=str(tmp_path / "web.png"))
            shot = os.environ.get("BLOOMCHAT_SCREENSHOT")
            if shot:
                page.screenshot(path=shot)
            # history survives a reload
            page.reload()
            page.wait_for_selector(".msg.assistant strong")
            assert page.locator("#history li").count() >= 1
            assert "Show me" in page.locator("#history li.active").inner_text()
    finally:
        cm.close()


def test_infer_web_stop_button_and_parameters(page, tiny_tokenizer):
    cm = scripted_chat_model(tiny_tokenizer, " la la", eos_after=False, delay=0.01, name="slow")
    try:
        with BackgroundServer(create_app(cm, guards=None)) as srv:
            page.goto(srv.url + "/")
            expect(page.locator("#max_tokens")).not_to_have_value("")
            assert page.input_value("#temperature") == "0.8" and page.input_value("#repetition_penalty") == "1.2"
            page.fill("#max_tokens", "2000")
            page.dispatch_event("#max_tokens", "change")
            _send(page, "sing")
            expect(page.locator(".msg.assistant .body")).to_have_text(re.compile(".{10,}"))
            assert page.is_enabled("#stop") and not page.is_enabled("#send")
            page.click("#stop")
            page.wait_for_selector(".msg.assistant .meta")
            assert page.locator(".msg.assistant .meta").inner_text().startswith("stopped")
            deadline = time.time() + 5
            while httpx.get(srv.url + "/health").json()["active_sequences"] and time.time() < deadline:
                time.sleep(0.05)
            assert httpx.get(srv.url + "/health").json()["active_sequences"] == 0
            assert cm.engine.steps < 1000  # 2000 tokens were asked for: generation really stopped
            # a parameter control limits the next reply
            page.fill("#max_tokens", "3")
            page.dispatch_event("#max_tokens", "change")
            _send(page, "again")
            expect(page.locator(".msg.assistant .meta")).to_have_count(2)
            assert page.locator(".msg.assistant .meta").nth(1).inner_text().startswith("length · 3 tokens")
    finally:
        cm.close()


def test_infer_web_asks_for_api_key(page, tiny_tokenizer):
    cm = scripted_chat_model(tiny_tokenizer, " ok", name="keyed")
    try:
        with BackgroundServer(create_app(cm, api_keys={"sk-web"}, guards=None)) as srv:
            page.goto(srv.url + "/")
            expect(page).to_have_title(re.compile("^keyed"))
            assert page.is_visible("#api_key")
            _send(page, "hi")
            page.wait_for_selector(".msg.assistant.error .meta")
            assert "API key" in page.locator(".msg.assistant .meta").inner_text()
            page.fill("#api_key", "sk-web")
            page.dispatch_event("#api_key", "change")
            _send(page, "hi")
            expect(page.locator(".msg.assistant .body", has_text=re.compile("^ok$"))).to_have_count(1)
    finally:
        cm.close()
