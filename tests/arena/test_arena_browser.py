"""The pages in headless Chromium (Playwright): a rater signs in and votes through several pairs,
a script-bearing reply stays text, and an admin then sees the updated table.

Screenshots land in $ARENA_SCREENSHOTS (default: the test's tmp folder) for a person to look at.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from arena_testlib import IN_CI, SYSTEMS, Server, seed_small
from bloomchat.arena.db import Database
from bloomchat.arena.store import add_rater

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail(f"{CHROMIUM} missing (CI installs chromium)")
        pytest.skip(f"{CHROMIUM} missing")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def test_rater_votes_then_admin_sees_table(browser, tmp_path):
    shots = Path(os.environ.get("ARENA_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    path = str(tmp_path / "arena.sqlite")
    db = Database(path)
    seed_small(db, langs=("zh",), n_prompts=2, evil=True)  # "alpha" replies carry <script> and onerror
    rater, admin = add_rater(db, "Li", ["zh"]), add_rater(db, "boss", [], admin=True)
    db.close()
    server = Server(path).start()
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.fill("#token", "rtr_wrong")
        page.click("#signin-btn")
        page.wait_for_selector("#signin-error:has-text('not valid')")
        page.fill("#token", rater)
        page.click("#signin-btn")
        page.wait_for_selector("#rate:not([hidden])")
        assert page.text_content("#who") == "Li - zh"
        choices = ["left", "right", "tie", "both_bad", "left"]
        revealed = []
        for i, choice in enumerate(choices):
            page.wait_for_selector("#choices:not([hidden])")
            assert page.text_content("#name-left") == "" and page.text_content("#name-right") == ""  # blind
            left, right = page.text_content("#left"), page.text_content("#right")
            assert left and right and left != right
            prompt = page.text_content("#prompt")
            if "<script>" in left + right or "<img" in prompt:
                # the markup is on the page as text: no element was made from it and nothing ran
                assert page.locator("#rate script, #rate img, #rate b, #rate a").count() == 0
                page.screenshot(path=str(shots / "arena-script-reply.png"), full_page=True)
            if i == 0:
                page.fill("#comment", "B is too short")
                page.screenshot(path=str(shots / "arena-rating.png"), full_page=True)
            if i == 4:  # the last one by keyboard: key 1 = A
                page.keyboard.press("1")
            else:
                page.click(f"#choices button[data-choice='{choice}']")
            page.wait_for_selector("#after:not([hidden])")
            reveal = page.text_content("#reveal")
            assert reveal.startswith("Saved:") and page.text_content("#name-left").startswith("- ")
            revealed.append(reveal)
            if i == 0:
                page.screenshot(path=str(shots / "arena-revealed.png"), full_page=True)
            if i == 3:
                page.keyboard.press("n")
            else:
                page.click("#next")
        assert page.evaluate("window.__pwned") is None
        page.wait_for_selector("#progress:has-text('rated 5 pairs')")
        assert "A is better" in revealed[0] and "B is better" in revealed[1] and "Tie" in revealed[2]
        assert "Both bad" in revealed[3] and "A is better" in revealed[4]
        page.click("#signout")
        page.fill("#token", admin)
        page.click("#signin-btn")
        page.wait_for_selector("#pairs-table tr >> nth=1")
        assert "5 votes" in page.text_content("#summary")
        rows = page.locator("#pairs-table tr").all_inner_texts()
        assert any(r.startswith("zh") for r in rows) and any(r.startswith("all") for r in rows)
        assert sum(int(r.split("\t")[3]) for r in rows[1:] if r.startswith("all")) == 5
        assert page.locator("#rater-table tr").all_inner_texts()[1:] == ["Li\t5"]
        for _ in range(100):  # (wait_for_function would need 'unsafe-eval', which the page's CSP forbids)
            if page.evaluate("document.getElementById('chart').naturalWidth") > 0:
                break
            page.wait_for_timeout(100)
        assert page.evaluate("document.getElementById('chart').naturalWidth") > 0
        page.screenshot(path=str(shots / "arena-admin.png"), full_page=True)
        assert not errors, errors
        # one more vote from the rater and the admin's refresh shows it
        ctx = browser.new_page()
        ctx.goto(server.url + "/")
        ctx.fill("#token", rater)
        ctx.click("#signin-btn")
        ctx.wait_for_selector("#choices:not([hidden])")
        ctx.click("#choices button[data-choice='tie']")
        ctx.wait_for_selector("#after:not([hidden])")
        page.click("#refresh")
        page.wait_for_selector("#summary:has-text('6 votes')")
        assert page.evaluate("window.__pwned") is None and ctx.evaluate("window.__pwned") is None
    finally:
        server.stop()


def test_an_empty_reply_is_shown_as_empty(browser, tmp_path):
    """A model that stopped at once wrote "": the rater sees that said, not a blank box."""
    from sqlalchemy import update

    from bloomchat.arena.db import Reply

    path = str(tmp_path / "arena.sqlite")
    db = Database(path)
    seed_small(db, langs=("zh",), n_prompts=1, systems=SYSTEMS[:2])  # one pair: alpha vs beta
    with db.Session.begin() as s:
        s.execute(update(Reply).where(Reply.system == SYSTEMS[0]).values(text=""))
    rater = add_rater(db, "Li", ["zh"])
    db.close()
    server = Server(path).start()
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.fill("#token", rater)
        page.click("#signin-btn")
        page.wait_for_selector("#choices:not([hidden])")
        sides = {side: (page.text_content(f"#{side}"), page.get_attribute(f"#{side}", "class") or "")
                 for side in ("left", "right")}
        empty = [side for side, (text, cls) in sides.items() if text.startswith("(empty reply")]
        assert len(empty) == 1 and "empty" in sides[empty[0]][1]
        other = "right" if empty == ["left"] else "left"
        assert sides[other][0].startswith("reply of") and "empty" not in sides[other][1].split()
    finally:
        server.stop()
