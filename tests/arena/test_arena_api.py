"""The arena API on SQLite and PostgreSQL: tokens, blind pairs, server-side vote checks, balance, results."""

from __future__ import annotations


import pytest
from fastapi.testclient import TestClient

from arena_testlib import SYSTEMS, seed_small
from bloomchat.arena.app import create_app
from bloomchat.arena.store import add_rater


def _h(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def arena(arena_db):
    seed_small(arena_db)
    tokens = {
        "admin": add_rater(arena_db, "boss", [], admin=True),
        "li": add_rater(arena_db, "Li", ["zh"]),
        "marie": add_rater(arena_db, "Marie", ["fr"]),
        "both": add_rater(arena_db, "Ana", ["zh", "fr"]),
    }
    with TestClient(create_app(arena_db, seed=0, overlap=0.0)) as client:
        yield client, tokens, arena_db


def test_tokens_required_and_results_for_admins_only(arena):
    client, tok, _ = arena
    assert client.get("/api/next").status_code == 401
    assert client.get("/api/next", headers=_h("rtr_forged")).status_code == 401
    for path in ("/api/results", "/api/results.csv", "/api/chart.png", "/api/votes.jsonl", "/api/status"):
        assert client.get(path, headers=_h(tok["li"])).status_code == 403, path
        assert client.get(path, headers=_h(tok["admin"])).status_code == 200, path
    me = client.get("/api/me", headers=_h(tok["li"])).json()
    assert me == {"name": "Li", "langs": ["zh"], "is_admin": False, "votes": 0}


def test_pair_is_blind_until_the_vote_then_revealed(arena):
    client, tok, _ = arena
    pair = client.get("/api/next", headers=_h(tok["li"])).json()
    assert pair["lang"] == "zh" and not pair["done"]
    assert set(pair) == {"done", "assignment_id", "lang", "turns", "left", "right", "votes"}
    for s in SYSTEMS:  # the page text holds no system name (reply texts here do, so check fields only)
        assert s not in str({k: v for k, v in pair.items() if k not in ("left", "right")})
    again = client.get("/api/next", headers=_h(tok["li"])).json()
    assert again["assignment_id"] == pair["assignment_id"]  # reload-safe: same open pair
    res = client.post("/api/vote", headers=_h(tok["li"]), json={"assignment_id": pair["assignment_id"], "choice": "left",
                                                               "comment": "  clearer  "}).json()
    assert res["left_system"] in pair["left"] and res["right_system"] in pair["right"]
    assert res["left_system"] != res["right_system"]
    votes = client.get("/api/votes.jsonl", headers=_h(tok["admin"])).text.splitlines()
    assert len(votes) == 1 and '"winner": "' + res["left_system"] in votes[0] and '"comment": "clearer"' in votes[0]


def test_vote_checked_on_the_server(arena):
    client, tok, _ = arena
    pair = client.get("/api/next", headers=_h(tok["li"])).json()
    aid = pair["assignment_id"]
    # another rater cannot vote on Li's pair, nor on an id that does not exist
    assert client.post("/api/vote", headers=_h(tok["marie"]), json={"assignment_id": aid, "choice": "left"}).status_code == 403
    assert client.post("/api/vote", headers=_h(tok["li"]), json={"assignment_id": 10**6, "choice": "left"}).status_code == 403
    for bad in ({"assignment_id": aid, "choice": "A"}, {"assignment_id": aid}, {"assignment_id": aid, "choice": "tie", "x": 1},
                {"assignment_id": aid, "choice": "tie", "comment": "x" * 5000}):
        assert client.post("/api/vote", headers=_h(tok["li"]), json=bad).status_code == 422
    ok = client.post("/api/vote", headers=_h(tok["li"]), json={"assignment_id": aid, "choice": "tie"})
    assert ok.status_code == 200
    # a retry of the same vote is harmless; changing it is refused
    assert client.post("/api/vote", headers=_h(tok["li"]), json={"assignment_id": aid, "choice": "tie"}).status_code == 200
    assert client.post("/api/vote", headers=_h(tok["li"]), json={"assignment_id": aid, "choice": "left"}).status_code == 409
    doc = client.get("/api/results", headers=_h(tok["admin"])).json()
    assert doc["votes"] == 1 and doc["votes_by_rater"] == {"Li": 1}


def _vote_all(client, token, choice_of=lambda pair: "left"):
    seen = []
    while True:
        pair = client.get("/api/next", headers=_h(token)).json()
        if pair["done"]:
            return seen
        res = client.post("/api/vote", headers=_h(token), json={"assignment_id": pair["assignment_id"],
                                                                "choice": choice_of(pair)}).json()
        seen.append((pair["lang"], pair["turns"][-1]["text"], tuple(sorted((res["left_system"], res["right_system"])))))


def test_languages_no_repeats_and_even_spread(arena):
    client, tok, _ = arena
    li = _vote_all(client, tok["li"])
    # 4 zh prompts x 3 system pairs; Li sees each exactly once and never a French prompt
    assert len(li) == 12 and len(set(li)) == 12 and {x[0] for x in li} == {"zh"}
    # while voting, every system pair comes round before any repeats: the first 3 cover all 3 pairs
    assert len({x[2] for x in li[:3]}) == 3
    ana_first = []
    for _ in range(8):
        pair = client.get("/api/next", headers=_h(tok["both"])).json()
        client.post("/api/vote", headers=_h(tok["both"]), json={"assignment_id": pair["assignment_id"], "choice": "right"})
        ana_first.append(pair["lang"])
    # zh already has 12 votes, so Ana is given the 8 French pairs first
    assert ana_first == ["fr"] * 8


def test_spread_across_pairs_with_many_raters(arena):
    client, tok, db = arena
    for i in range(5):
        t = add_rater(db, f"zh{i}", ["zh"])
        for _ in range(3):
            pair = client.get("/api/next", headers=_h(t)).json()
            client.post("/api/vote", headers=_h(t), json={"assignment_id": pair["assignment_id"], "choice": "tie"})
    votes = [v for v in client.get("/api/results", headers=_h(tok["admin"])).json()["pairs"] if v["lang"] == "zh"]
    counts = sorted(v["n"] for v in votes)
    assert sum(counts) == 15 and counts == [5, 5, 5]  # 15 votes over 3 system pairs: 5 each


def test_results_shape_and_tie_rules(arena):
    client, tok, _ = arena
    _vote_all(client, tok["li"], lambda p: "left" if "alpha" in p["left"] else ("right" if "alpha" in p["right"] else "tie"))
    seed = client.get("/api/results", headers=_h(tok["admin"])).json()
    alpha_rows = [r for r in seed["pairs"] if r["lang"] == "zh" and r["system_a"] == "alpha"]
    assert alpha_rows and all(r["a_share"] == 1.0 for r in alpha_rows)
    bg = next(r for r in seed["pairs"] if r["lang"] == "zh" and r["system_a"] == "beta")
    assert bg["tie_share"] == 1.0 and bg["a_share"] == 0.0
    assert client.get("/api/results?tie_rule=half", headers=_h(tok["admin"])).json()["pairs"][-1]["a_share"] == 0.5
    assert client.get("/api/results?tie_rule=nope", headers=_h(tok["admin"])).status_code == 422
    assert seed["ranking"]["zh"][0]["system"] == "alpha"
    csv = client.get("/api/results.csv", headers=_h(tok["admin"])).text.splitlines()
    assert csv[0].startswith("lang,system_a,system_b,n,") and len(csv) == 1 + len(seed["pairs"])
    png = client.get("/api/chart.png", headers=_h(tok["admin"]))
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_security_headers_and_static_page(arena):
    client, _tok, _ = arena
    page = client.get("/")
    assert page.status_code == 200 and "arena.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    assert client.get("/static/arena.js").status_code == 200


def test_overlap_sends_pairs_to_a_second_rater(arena_db):
    seed_small(arena_db, langs=("zh",), n_prompts=10)
    a, b = add_rater(arena_db, "A", ["zh"]), add_rater(arena_db, "B", ["zh"])
    admin = add_rater(arena_db, "boss", [], admin=True)
    with TestClient(create_app(arena_db, seed=1, overlap=1.0)) as client:
        for t in (a, b):
            for _ in range(5):
                pair = client.get("/api/next", headers=_h(t)).json()
                client.post("/api/vote", headers=_h(t), json={"assignment_id": pair["assignment_id"], "choice": "left"})
        agree = client.get("/api/results", headers=_h(admin)).json()["agreement"]["zh"]
    # with overlap 1.0 every one of B's pairs is one A already rated
    assert agree["pairs"] == 5 and agree["ratings"] == 10


def test_export_for_one_language_holds_only_its_votes(arena, tmp_path):
    import json

    from bloomchat.arena.report import write_all

    client, tok, db = arena
    _vote_all(client, tok["li"], lambda p: "left")
    _vote_all(client, tok["marie"], lambda p: "right")
    doc = write_all(db, tmp_path / "fr", "seed", ["fr"])
    votes = [json.loads(x) for x in (tmp_path / "fr" / "votes.jsonl").read_text(encoding="utf-8").splitlines()]
    assert votes and {v["lang"] for v in votes} == {"fr"} and len(votes) == doc["votes"]
