"""Which pair a rater sees next: balanced over languages, then system pairs, then prompts.

A *pair* is (prompt, two systems that both replied to it). The rules:

* only prompts in the rater's languages; never a pair this rater already had (also a DB constraint);
* an unvoted assignment is handed out again until it is voted (reload-safe);
* among the rest, the rater's language with the fewest assignments so far, then the system
  pair with the fewest in that language, then the prompt pair with the fewest raters, random
  among ties: votes spread evenly across system pairs and languages;
* with probability `overlap` the pick is restricted to pairs another rater already had, so
  inter-rater agreement can be measured without waiting for the pool to run out.

Counts include assigned-but-unvoted rows so raters who ask at the same time get different pairs.
Left/right is drawn at random per assignment; the page never learns the system names before the vote.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, defaultdict

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from bloomchat.arena.db import Assignment, Database, Prompt, Rater, Reply


def _open_assignment(s, rater_id: int) -> Assignment | None:
    return s.scalar(
        select(Assignment).where(Assignment.rater_id == rater_id, Assignment.choice.is_(None)).order_by(Assignment.id).limit(1)
    )


def pick_pair(s, rater: Rater, rng: random.Random, overlap: float = 0.0):
    """(prompt_id, lang, system_lo, system_hi) for the rater's next pair, or None when none is left."""
    langs = rater.lang_list
    if not langs:
        return None
    rows = s.execute(
        select(Reply.prompt_id, Prompt.lang, Reply.system).join(Prompt, Prompt.id == Reply.prompt_id).where(Prompt.lang.in_(langs))
    ).all()
    systems_of: dict[tuple[int, str], list[str]] = defaultdict(list)
    for pid, lang, system in rows:
        systems_of[(pid, lang)].append(system)
    item_count: Counter = Counter()
    pair_count: Counter = Counter()
    lang_count: Counter = Counter()
    counts = s.execute(
        select(Assignment.prompt_id, Prompt.lang, Assignment.system_lo, Assignment.system_hi, func.count())
        .join(Prompt, Prompt.id == Assignment.prompt_id)
        .where(Prompt.lang.in_(langs))
        .group_by(Assignment.prompt_id, Prompt.lang, Assignment.system_lo, Assignment.system_hi)
    ).all()
    for pid, lang, lo, hi, c in counts:
        item_count[(pid, lo, hi)] += c
        pair_count[(lang, lo, hi)] += c
        lang_count[lang] += c
    mine = set(s.execute(
        select(Assignment.prompt_id, Assignment.system_lo, Assignment.system_hi).where(Assignment.rater_id == rater.id)
    ).all())
    candidates = []
    for (pid, lang), systems in systems_of.items():
        for lo, hi in itertools.combinations(sorted(set(systems)), 2):
            if (pid, lo, hi) not in mine:
                candidates.append((pid, lang, lo, hi))
    if not candidates:
        return None
    if overlap > 0 and rng.random() < overlap:
        shared = [c for c in candidates if item_count[(c[0], c[2], c[3])] > 0]
        if shared:
            candidates = shared
    rng.shuffle(candidates)
    return min(candidates, key=lambda c: (lang_count[c[1]], pair_count[(c[1], c[2], c[3])], item_count[(c[0], c[2], c[3])]))


def next_assignment(db: Database, rater_id: int, *, rng: random.Random | None = None, overlap: float = 0.0) -> Assignment | None:
    """The rater's open assignment, or a new one; None when the rater has seen every pair."""
    rng = rng or random.Random()
    for _attempt in range(3):
        try:
            with db.Session.begin() as s:
                a = _open_assignment(s, rater_id)
                if a is not None:
                    return a
                rater = s.get(Rater, rater_id)
                pick = pick_pair(s, rater, rng, overlap)
                if pick is None:
                    return None
                pid, _lang, lo, hi = pick
                a = Assignment(rater_id=rater_id, prompt_id=pid, system_lo=lo, system_hi=hi, left_is_lo=rng.random() < 0.5)
                s.add(a)
                s.flush()
                return a
        except IntegrityError:  # the same rater asked twice at once (PostgreSQL); take the other's row
            continue
    with db.Session() as s:
        return _open_assignment(s, rater_id)


def outcome_of(choice: str, left_is_lo: bool) -> str:
    """Page choice (left/right/tie/both_bad) -> outcome in system terms (lo/hi/tie/both_bad)."""
    if choice == "left":
        return "lo" if left_is_lo else "hi"
    if choice == "right":
        return "hi" if left_is_lo else "lo"
    return choice
