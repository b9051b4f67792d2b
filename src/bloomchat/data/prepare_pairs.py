"""`prepare_pairs`: OASST1 rankings and users' preference files -> one prepared-pairs JSONL
(+ summary JSON + rejects JSONL), with `prepare`'s accounting: per input file, lines read =
kept + filtered (by reason) + rejected (each in the rejects file with file, line and reason).

    bloomchat prepare-pairs --oasst1 oasst1.messages.jsonl --jsonl oaast_rm_zh.json my_pairs.jsonl -o pairs.jsonl

    from bloomchat.data.prepare_pairs import prepare_pairs
    summary = prepare_pairs(out=Path("pairs.jsonl"), oasst1=[...], jsonl=[...])

A line is kept when a kept pair was built from it (an OASST1 prompt message serves every pair
below it). Pairs are written in input order; the preference stage shuffles when it packs.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from bloomchat.data import langid
from bloomchat.data.filters import MAX_TURN_CHARS
from bloomchat.data.ledger import Ledger
from bloomchat.data.pair_readers import PAIRINGS, Group, read_oasst1_pairs, read_user_pairs
from bloomchat.data.pairs import Pair, PairFilters
from bloomchat.data.prepare import _check_outputs, _create, _json_line, rejects_path, summary_path
from bloomchat.data.readers import no_usable_line
from bloomchat.data.records import check_file
from bloomchat.errors import BloomchatError


class _Writer:
    """Filters, language, output line and the ledger of each group's lines."""

    def __init__(self, f, ledger: Ledger, filters: PairFilters, *, detect: bool, keep_langs):
        self.f, self.ledger, self.filters = f, ledger, filters
        self.detect, self.keep_langs = detect, keep_langs
        self.by_source: Counter = Counter()
        self.by_lang: Counter = Counter()
        self.dropped: Counter = Counter()  # pairs per filter reason

    def reason(self, p: Pair) -> str | None:
        why = self.filters.reason(p)
        if why is not None:
            return why
        if p.lang is None and self.detect:
            p.lang = langid.detect_turns([t.text for t in p.prompt] + [p.chosen])
        if self.keep_langs and not langid.lang_matches(p.lang, self.keep_langs):
            return "lang_not_kept"
        return None

    def take(self, key: str, group: Group) -> None:
        kept: set[int] = set()
        why: dict[int, str] = {}
        for p in group.pairs:
            reason = self.reason(p)
            if reason is not None:
                self.dropped[reason] += 1
                for ln in p.lines:
                    why.setdefault(ln, reason)
                continue
            kept.update(p.lines)
            self.f.write(_json_line(p.to_record()))
            self.by_source[p.source] += 1
            self.by_lang[p.lang or langid.UNDETERMINED] += 1
        for ln in group.lines:
            if ln in kept:
                self.ledger.keep(key)
            else:
                self.ledger.drop(key, why.get(ln) or group.unused.get(ln) or "no_pair")


def prepare_pairs(*, out: Path, oasst1: Sequence[Path] = (), jsonl: Sequence[Path] = (),
                  pairing: str = "best_vs_rest", rejects: Path | None = None, dedup: bool = True,
                  max_turn_chars: int | None = MAX_TURN_CHARS, detect_lang: bool = True,
                  keep_langs: Sequence[str] | None = None, progress: bool = True) -> dict:
    """Prepare one preference file; returns the summary (also written next to `out`).

    Summary keys: pairs, by_source, by_lang, filtered_pairs (by reason), files (per input file:
    lines_read, kept, filtered and rejected lines by reason, balanced), balanced, rejects,
    rejects_written, options, seconds."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if pairing not in PAIRINGS:
        raise BloomchatError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}", where="--pairing")
    out = Path(out)
    inputs = [("oasst1", check_file(p)) for p in oasst1] + [("jsonl", check_file(p)) for p in jsonl]
    rejects = _check_outputs(out, Path(rejects) if rejects is not None else rejects_path(out), inputs, 1)
    tmp = {t: t.with_name(f".{t.name}.{os.getpid()}.tmp") for t in (out, rejects, summary_path(out))}
    try:
        with _create(tmp[rejects]) as rej, open(tmp[out], "wb") as f:
            ledger = Ledger(rej)
            w = _Writer(f, ledger, PairFilters(dedup=dedup, max_turn_chars=max_turn_chars or None),
                        detect=detect_lang, keep_langs=tuple(keep_langs or ()))
            for kind, path in inputs:
                groups = (read_oasst1_pairs(path, ledger, pairing=pairing) if kind == "oasst1"
                          else read_user_pairs(path, ledger))
                for g in tqdm(groups, desc=f"pairs {path.name}", unit="group", disable=not progress, leave=False):
                    w.take(str(path), g)
                st = ledger.files[str(path)]
                if st.lines_read == sum(st.rejected.values()):
                    rej.flush()
                    raise no_usable_line(path, kind)
        files = [s.to_dict() for s in ledger.files.values()]
        summary = {"pairs": sum(w.by_source.values()), "by_source": dict(w.by_source.most_common()),
                   "by_lang": dict(w.by_lang.most_common()), "filtered_pairs": dict(w.dropped.most_common()),
                   "files": files, "balanced": all(x["balanced"] for x in files), "out": str(out),
                   "summary": str(summary_path(out)), "rejects": str(rejects),
                   "rejects_written": ledger.rejects_written,
                   "options": {"pairing": pairing, "dedup": dedup, "max_turn_chars": max_turn_chars,
                               "detect_lang": detect_lang, "keep_langs": list(keep_langs or [])},
                   "langid": langid.detector_name(), "seconds": round(time.perf_counter() - t0, 3)}
        with _create(tmp[summary_path(out)]) as sf:
            sf.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        for target, t in tmp.items():
            os.replace(t, target)
    except OSError as e:
        raise BloomchatError(f"cannot write: {e.strerror or e}", where=str(e.filename or out)) from None
    finally:
        for t in tmp.values():
            if t.exists():
                t.unlink()
    return summary
