"""A real `bloomchat arena serve` (uvicorn, 127.0.0.1, free port): 20 raters at once, then a restart."""

from __future__ import annotations

import threading

import httpx
import pytest

from arena_testlib import Server, seed_small
from bloomchat.arena.store import add_rater

N_RATERS = 20
VOTES_EACH = 6


@pytest.fixture
def served(arena_db):
    """The server over a SQLite file and over PostgreSQL."""
    db = arena_db
    path = db.url
    seed_small(db, langs=("zh", "fr"), n_prompts=10)  # 2 langs x 10 prompts x 3 pairs = 60 pairs
    tokens = [add_rater(db, f"r{i}", ["zh", "fr"] if i % 3 == 0 else ["zh"] if i % 3 == 1 else ["fr"]) for i in range(N_RATERS)]
    admin = add_rater(db, "boss", [], admin=True)
    server = Server(path, overlap=0.2).start()
    yield server, tokens, admin, path
    server.stop()


def _rater(url, token, out, errors):
    h = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, headers=h, timeout=60) as c:
            for _ in range(VOTES_EACH):
                pair = c.get("/api/next").raise_for_status().json()
                choice = "left" if pair["assignment_id"] % 2 else "tie"
                r = c.post("/api/vote", json={"assignment_id": pair["assignment_id"], "choice": choice}).raise_for_status()
                out.append((token, pair["assignment_id"], r.json()["choice"]))
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(repr(e))


def test_twenty_raters_at_once_lose_no_vote_and_restart_keeps_everything(served):
    server, tokens, admin, path = served
    done, errors = [], []
    threads = [threading.Thread(target=_rater, args=(server.url, t, done, errors)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(done) == N_RATERS * VOTES_EACH
    assert len({a for _, a, _ in done}) == len(done)  # every vote its own assignment row
    ha = {"Authorization": f"Bearer {admin}"}
    before = httpx.get(server.url + "/api/results", headers=ha, timeout=60).json()
    assert before["votes"] == N_RATERS * VOTES_EACH
    assert sum(r["n"] for r in before["pairs"] if r["lang"] == "all") == N_RATERS * VOTES_EACH
    assert sum(before["votes_by_rater"].values()) == N_RATERS * VOTES_EACH
    assert all(n == VOTES_EACH for n in before["votes_by_rater"].values())
    by_choice = {"left": 0, "tie": 0}
    for _, _, c in done:
        by_choice[c] += 1
    assert sum(r["ties"] for r in before["pairs"] if r["lang"] == "all") == by_choice["tie"]
    # an open (unvoted) pair, then a restart: the votes and the open pair both survive
    h0 = {"Authorization": f"Bearer {tokens[0]}"}
    open_pair = httpx.get(server.url + "/api/next", headers=h0, timeout=30).json()
    server.stop()
    server.start()
    after = httpx.get(server.url + "/api/results", headers=ha, timeout=60).json()
    for key in ("votes", "votes_by_lang", "votes_by_rater", "pairs", "agreement"):
        assert after[key] == before[key], key
    assert httpx.get(server.url + "/api/next", headers=h0, timeout=30).json()["assignment_id"] == open_pair["assignment_id"]
