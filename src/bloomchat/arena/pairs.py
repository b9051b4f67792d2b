"""Arena votes -> preference pairs: native speakers' blind choices become training data.

    from bloomchat.arena.pairs import export_pairs
    summary = export_pairs("arena.sqlite", "arena-pairs.jsonl")          # or a Database, or a URL

Each decided vote (the rater picked a side: not a tie, not "both bad") gives one pair in the
prepared-pairs layout (`bloomchat.data.pairs`): the prompt's turns, the winning system's reply as
`chosen`, the other as `rejected`, the prompt's language, source "arena", and in `meta` the vote
id, the rater, both systems and the prompt key, so every pair can be traced to the vote behind it.
Several raters voting on one prompt and pair of systems give several pairs (one per vote), which
weights a prompt by how many people judged it, as the arena's own statistics do.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from bloomchat.arena.db import Assignment, Database, Prompt, Rater, Reply
from bloomchat.conversation import Turn
from bloomchat.data.pairs import Pair
from bloomchat.errors import BloomchatError


def _pair(a: Assignment, prompt: Prompt, rater: Rater, replies: dict[str, str]) -> Pair:
    win, lose = (a.system_lo, a.system_hi) if a.outcome == "lo" else (a.system_hi, a.system_lo)
    turns = [Turn(t["role"], t["text"]) for t in json.loads(prompt.turns_json)]
    meta = {"vote_id": a.id, "rater": rater.name, "rater_id": rater.id, "prompt_key": prompt.key,
            "chosen_system": win, "rejected_system": lose, "choice": a.choice,
            "voted_at": a.voted_at.isoformat() if a.voted_at else None}
    return Pair(turns, replies[win], replies[lose], source="arena", lang=prompt.lang, id=f"arena:vote{a.id}",
                meta=meta)


def arena_pairs(db: Database, langs: list[str] | None = None) -> tuple[list[Pair], Counter]:
    """The pairs of every decided vote (in vote order) and the counts of votes left out, by why."""
    skipped: Counter = Counter()
    pairs: list[Pair] = []
    with db.Session() as s:
        q = (select(Assignment, Prompt, Rater).join(Prompt, Prompt.id == Assignment.prompt_id)
             .join(Rater, Rater.id == Assignment.rater_id).where(Assignment.outcome.is_not(None))
             .order_by(Assignment.id))
        if langs:
            q = q.where(Prompt.lang.in_(langs))
        rows = s.execute(q).all()
        ids = {a.prompt_id for a, _, _ in rows}
        replies: dict[int, dict[str, str]] = {}
        for r in (s.scalars(select(Reply).where(Reply.prompt_id.in_(ids))) if ids else []):
            replies.setdefault(r.prompt_id, {})[r.system] = r.text
        for a, prompt, rater in rows:
            if a.outcome not in ("lo", "hi"):
                skipped[a.outcome] += 1  # tie, both_bad: no preference between the two
                continue
            have = replies.get(a.prompt_id, {})
            if a.system_lo not in have or a.system_hi not in have:
                skipped["reply_missing"] += 1
                continue
            pairs.append(_pair(a, prompt, rater, have))
    return pairs, skipped


def export_pairs(db_url_or_store: str | Path | Database, out: str | Path, *, langs: list[str] | None = None) -> dict:
    """Write the decided votes as a prepared-pairs JSONL; returns {pairs, by_lang, skipped, out}."""
    out = Path(out)
    if not out.parent.is_dir():
        raise BloomchatError("output folder does not exist", where=str(out.parent))
    db = db_url_or_store if isinstance(db_url_or_store, Database) else Database(str(db_url_or_store))
    try:
        pairs, skipped = arena_pairs(db, langs)
    finally:
        if db is not db_url_or_store:
            db.close()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for p in pairs:
                f.write(json.dumps(p.to_record(), ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BloomchatError(f"cannot write: {e.strerror or e}", where=str(out)) from None
    return {"pairs": len(pairs), "by_lang": dict(Counter(p.lang for p in pairs).most_common()),
            "skipped": dict(skipped), "out": str(out)}
