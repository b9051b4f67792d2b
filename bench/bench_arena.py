"""How fast the arena assigns pairs and computes results at a realistic size.

    python bench/bench_arena.py                    # SQLite in a temp folder
    python bench/bench_arena.py --db postgresql+psycopg2://user@127.0.0.1:5432/bench_arena
    python bench/bench_arena.py --votes 20000

Size: 10 languages x 80 prompts (Vicuna-80) x 5 systems = 800 prompts, 8,000 pairs
(10 system pairs per prompt); 40 raters (4 per language). Prints milliseconds per
`next_assignment` and per vote at the start and after N votes, and seconds for the full results.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from bloomchat.arena.assign import next_assignment, outcome_of
from bloomchat.arena.db import Assignment, Database, utcnow
from bloomchat.arena.prompt_sets import PromptItem
from bloomchat.arena.report import results
from bloomchat.arena.store import add_rater, import_prompts

LANGS = ["ar", "de", "en", "es", "fr", "it", "ja", "ko", "pt", "zh"]
SYSTEMS = ["bloomchat", "gpt-4", "mpt-chat", "vicuna", "openchatkit"]


def vote(db, rater_id, rng):
    t0 = time.perf_counter()
    a = next_assignment(db, rater_id, rng=rng, overlap=0.1)
    t1 = time.perf_counter()
    with db.Session.begin() as s:
        row = s.get(Assignment, a.id)
        row.choice = rng.choice(["left", "right", "tie", "both_bad"])
        row.outcome, row.voted_at = outcome_of(row.choice, row.left_is_lo), utcnow()
    return (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    ap.add_argument("--votes", type=int, default=5000)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    db = Database(args.db or str(Path(tmp.name) / "bench.sqlite"))
    items = []
    for lang in LANGS:
        for i in range(1, 81):
            it = PromptItem(f"bench/{lang}/{i}", lang, "bench", [{"role": "human", "text": f"q{i} {lang}"}])
            it.replies = {s: f"{s} answers q{i} in {lang} " * 20 for s in SYSTEMS}
            items.append(it)
    t = time.perf_counter()
    import_prompts(db, items, "bench")
    print(f"import 800 prompts + 4,000 replies: {time.perf_counter() - t:.2f} s")
    for i in range(40):
        add_rater(db, f"r{i}", [LANGS[i % 10]])
    from sqlalchemy import select

    from bloomchat.arena.db import Rater

    with db.Session() as s:
        raters = list(s.scalars(select(Rater.id)))
    rng = random.Random(0)

    def sample(n):
        a, v = [], []
        for _ in range(n):
            x, y = vote(db, rng.choice(raters), rng)
            a.append(x)
            v.append(y)
        return statistics.median(a), statistics.median(v)

    a0, v0 = sample(50)
    print(f"empty arena: next pair {a0:.1f} ms, vote {v0:.1f} ms (median of 50)")
    t = time.perf_counter()
    n = 50
    while n < args.votes - 50:
        vote(db, rng.choice(raters), rng)
        n += 1
    rate = (args.votes - 100) / (time.perf_counter() - t)
    a1, v1 = sample(50)
    print(f"after {args.votes} votes: next pair {a1:.1f} ms, vote {v1:.1f} ms (median of 50); "
          f"{rate:.0f} assign+vote per second from one client")
    t = time.perf_counter()
    doc = results(db)
    print(f"results over {doc['votes']} votes (shares, 2,000 bootstraps, Bradley-Terry 1,000 refits x 11 groups, "
          f"agreement): {time.perf_counter() - t:.2f} s")
    db.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
