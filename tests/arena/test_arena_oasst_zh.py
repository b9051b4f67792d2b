"""A realistic run on real Chinese data: OASST1 prompts with their human-ranked sibling replies
(oaast_rm_zh.json). Simulated native raters follow the OASST ranking 80% of the time; the arena's
results must recover that ranking, with intervals that exclude a coin flip."""

from __future__ import annotations

import random

import pytest
from fastapi.testclient import TestClient

from bloomchat.arena.app import create_app
from bloomchat.arena.db import Database
from bloomchat.arena.prompt_sets import load_prompt_file
from bloomchat.arena.store import add_rater, import_prompts

N_RATERS, VOTES_EACH = 6, 25  # 150 votes over 3 system pairs: ~50 each, enough for a +-11 point interval


@pytest.fixture
def oasst_arena(shared_data, tmp_path):
    path = shared_data("llamafactory_demo_zh_en", "oaast_rm_zh.json")
    db = Database(str(tmp_path / "arena.sqlite"))
    items = load_prompt_file(path, ranked_prefix="oasst", ranked_top=3)
    ps, rs = import_prompts(db, items, str(path))
    assert ps.added == 775 and rs.added == 775 * 2 + sum(len(i.replies) == 3 for i in items)
    # re-importing adds nothing
    again = import_prompts(db, load_prompt_file(path, ranked_prefix="oasst", ranked_top=3), str(path))
    assert again[0].added == 0 and again[1].added == 0
    rank_of = {}
    for item in items:
        for system, text in item.replies.items():
            rank_of[(item.turns[-1]["text"], text)] = int(system.rsplit("rank", 1)[1])
    yield db, rank_of
    db.close()


def test_arena_recovers_oasst_ranking(oasst_arena):
    db, rank_of = oasst_arena
    rng = random.Random(7)
    tokens = [add_rater(db, f"zh-{i}", ["zh"]) for i in range(N_RATERS)]
    admin = add_rater(db, "boss", [], admin=True)
    with TestClient(create_app(db, seed=3, overlap=0.3)) as client:
        for t in tokens:
            h = {"Authorization": f"Bearer {t}"}
            for _ in range(VOTES_EACH):
                pair = client.get("/api/next", headers=h).json()
                assert pair["lang"] == "zh"
                q = pair["turns"][-1]["text"]
                better = "left" if rank_of[(q, pair["left"])] < rank_of[(q, pair["right"])] else "right"
                worse = "right" if better == "left" else "left"
                x = rng.random()
                choice = better if x < 0.8 else "tie" if x < 0.9 else worse
                assert client.post("/api/vote", headers=h, json={"assignment_id": pair["assignment_id"],
                                                                 "choice": choice}).status_code == 200
        doc = client.get("/api/results", headers={"Authorization": f"Bearer {admin}"}).json()
    assert doc["votes"] == N_RATERS * VOTES_EACH
    pairs = {(r["system_a"], r["system_b"]): r for r in doc["pairs"] if r["lang"] == "zh"}
    assert set(pairs) == {("oasst-rank1", "oasst-rank2"), ("oasst-rank1", "oasst-rank3"), ("oasst-rank2", "oasst-rank3")}
    assert max(r["n"] for r in pairs.values()) - min(r["n"] for r in pairs.values()) <= 2  # spread evenly
    for r in pairs.values():  # the better-ranked reply is preferred, and a coin flip is outside the interval
        assert r["a_share"] > 0.6 and r["a_ci"][0] > 0.5 and r["b_ci"][1] < 0.5
    assert [x["system"] for x in doc["ranking"]["zh"]] == ["oasst-rank1", "oasst-rank2", "oasst-rank3"]
    agree = doc["agreement"]["zh"]
    assert agree["pairs"] >= 10 and 0.4 < agree["percent_agreement"] < 0.95
