"""Arena votes become preference pairs: decided votes only, winner as chosen, rater and vote kept."""

from __future__ import annotations

import json
import random

from arena_testlib import seed_small

from bloomchat.data.pairs import Pair


def _vote(db, rater_id: int, choice: str, rng) -> int:
    """Take the rater's next pair and vote on it the way the page's /api/vote does."""
    from bloomchat.arena.assign import next_assignment, outcome_of
    from bloomchat.arena.db import Assignment, utcnow

    a = next_assignment(db, rater_id, rng=rng)
    with db.Session.begin() as s:
        row = s.get(Assignment, a.id)
        row.choice, row.outcome, row.voted_at = choice, outcome_of(choice, row.left_is_lo), utcnow()
    return a.id


def test_export_pairs_from_decided_votes(tmp_path):
    from sqlalchemy import select

    from bloomchat.arena.assign import next_assignment
    from bloomchat.arena.db import Assignment, Database, Rater
    from bloomchat.arena.pairs import export_pairs
    from bloomchat.arena.store import add_rater

    db = Database(str(tmp_path / "arena.sqlite"))
    seed_small(db, langs=("zh", "fr"), n_prompts=3)
    add_rater(db, "Li", ["zh"])
    add_rater(db, "Marie", ["fr"])
    with db.Session() as s:
        ids = {r.name: r.id for r in s.scalars(select(Rater))}
    rng = random.Random(0)
    choices = {"Li": ["left", "right", "tie", "left"], "Marie": ["right", "both_bad", "left"]}
    votes = {name: [(_vote(db, ids[name], c, rng), c) for c in cs] for name, cs in choices.items()}
    assert next_assignment(db, ids["Li"], rng=rng) is not None  # assigned, not voted on: no pair

    s = export_pairs(db, tmp_path / "arena-pairs.jsonl")
    assert s["pairs"] == 5 and s["skipped"] == {"tie": 1, "both_bad": 1}
    assert s["by_lang"] == {"zh": 3, "fr": 2}
    pairs = [Pair.from_record(json.loads(x)) for x in (tmp_path / "arena-pairs.jsonl").read_text().splitlines()]
    with db.Session() as sess:
        rows = {a.id: a for a in sess.scalars(select(Assignment))}
    decided = [(vid, name) for name, vs in votes.items() for vid, c in vs if c in ("left", "right")]
    assert sorted(p.meta["vote_id"] for p in pairs) == sorted(v for v, _ in decided)
    for p in pairs:
        a = rows[p.meta["vote_id"]]
        winner = a.left_system if a.choice == "left" else a.right_system
        loser = a.right_system if a.choice == "left" else a.left_system
        assert (p.meta["chosen_system"], p.meta["rejected_system"]) == (winner, loser)
        lang, i = p.meta["prompt_key"].split("/")[1:]
        assert p.chosen == f"reply of {winner} to {lang}/{i}" and p.rejected == f"reply of {loser} to {lang}/{i}"
        assert p.prompt[-1].text == f"question {i} in {lang}" and p.lang == lang and p.source == "arena"
        assert p.meta["rater"] == ("Li" if lang == "zh" else "Marie") and p.id == f"arena:vote{a.id}"
    # by URL / path too, and one language only
    s2 = export_pairs(str(tmp_path / "arena.sqlite"), tmp_path / "fr.jsonl", langs=["fr"])
    assert s2["pairs"] == 2 and s2["skipped"] == {"both_bad": 1}
    db.close()
    # the command: the same file, one line on the screen
    from bloomchat.cli import main

    assert main(["arena", "export-pairs", "--db", str(tmp_path / "arena.sqlite"), "--out",
                 str(tmp_path / "cli.jsonl")]) == 0
    assert (tmp_path / "cli.jsonl").read_bytes() == (tmp_path / "arena-pairs.jsonl").read_bytes()
    assert main(["arena", "export-pairs", "--db", str(tmp_path / "arena.sqlite"), "--out",
                 str(tmp_path / "no" / "such" / "x.jsonl")]) == 2
