"""`prepare`: raw conversation files -> one prepared JSONL (+ summary JSON + rejects JSONL).

    bloomchat prepare --oig unified_chip2.jsonl unified_basic.jsonl -o stage1.jsonl
    bloomchat prepare --oasst1 oasst1.messages.jsonl --dolly databricks-dolly-15k.jsonl -o stage2.jsonl
    bloomchat prepare --jsonl my_chats.jsonl --keep-lang zh en --max-per-lang 50000 -o mine.jsonl

    from bloomchat.data import prepare
    summary = prepare(out=Path("stage2.jsonl"), oasst1=[...], dolly=[...], seed=42)

Each output line is `Conversation.to_record()`: BLOOMChat's `{"prompt": "", "completion": text}`
plus `turns`, `source`, `lang`, `id`. With `filters=False` (and no language options) the
completions are exactly the texts BLOOMChat's data_prep scripts write for the same input.

Memory stays flat whatever the input size: conversations that pass the filters are spilled to a
temporary file next to the output and only their byte offsets (8 bytes), file index, line count
and language index are kept; the seeded shuffle, the `unified_basic` copies and the per-language
caps work on those arrays, then the output is written by seeking into the spill file. Only the
duplicate filter's digests and OASST1 message trees (held whole to find best paths) grow with
the input.
"""

from __future__ import annotations

import json
import os
import time
from array import array
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from bloomchat.data import langid
from bloomchat.data.filters import FilterConfig, Filters
from bloomchat.data.ledger import Ledger
from bloomchat.data.options import check_options
from bloomchat.data.readers import (
    OIG_PER_SOURCE,
    PROSOCIAL_CHECKS,
    no_usable_line,
    oig_copies,
    file_stem,
    read_dolly,
    read_oasst1,
    read_oig,
    read_tree_ids,
    read_user_jsonl,
)
from bloomchat.data.records import check_file
from bloomchat.errors import BloomchatError

#: Conversations tagged per language-ID round: big enough to keep worker processes busy
#: (256 per task), small enough to keep memory flat (~1 MB of texts).
LANGID_BATCH = 2048

def summary_path(out: Path) -> Path:
    return out.with_name(out.stem + ".summary.json")


def rejects_path(out: Path) -> Path:
    return out.with_name(out.stem + ".rejects.jsonl")


def _as_paths(value: Any) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    return [Path(v) for v in value]


def _options(options: dict[str, Any]) -> dict[str, Any]:
    opts = check_options(options)
    if opts["oasst1_trees"] is not None:
        opts["oasst1_trees"] = Path(opts["oasst1_trees"])
    return opts


def prepare(
    *,
    out: Path,
    oig: Sequence[Path] = (),
    dolly: Sequence[Path] = (),
    oasst1: Sequence[Path] = (),
    jsonl: Sequence[Path] = (),
    seed: int = 42,
    per_source: int = OIG_PER_SOURCE,
    rejects: Path | None = None,
    **options: Any,
) -> dict:
    """Prepare one stage's training file; returns the summary (also written next to `out`).

    Summary keys: conversations (lines written, unified_basic copies included),
    unique_conversations, by_source, by_lang, filtered_conversations (by reason), files (per
    input file: lines_read, kept, filtered and rejected lines by reason, conversations_out,
    balanced), balanced (all files), rejects, rejects_written, options, seconds.
    `options` are bloomchat.data.options.PrepareOptions' fields (DEFAULT_OPTIONS' keys), each
    checked against its declared type; an unknown or ill-typed one is a BloomchatError.
    """
    t0 = time.perf_counter()
    opts = _options(options)
    out = Path(out)
    inputs: list[tuple[str, Path]] = []
    for kind, value in (("oig", oig), ("dolly", dolly), ("oasst1", oasst1), ("jsonl", jsonl)):
        inputs += [(kind, check_file(p)) for p in _as_paths(value)]
    rejects = _check_outputs(out, Path(rejects) if rejects is not None else rejects_path(out), inputs, per_source)
    trees = read_tree_ids(Path(opts["oasst1_trees"])) if opts["oasst1_trees"] is not None else None
    if trees is not None and not oasst1:
        raise BloomchatError("oasst1_trees filters OASST1 trees, but there is no --oasst1 input")
    fconf = _filter_config(opts)
    candidates = langid.resolve_candidates(opts["lang_candidates"])

    spill_path = out.with_name(f".{out.name}.{os.getpid()}.spill")
    # every output is written to a temporary name next to it and moved into place only once the
    # whole run succeeded: a failed run leaves the previous out / rejects / summary untouched
    tmp = {t: t.with_name(f".{t.name}.{os.getpid()}.tmp") for t in (out, rejects, summary_path(out))}
    would_skip: Counter = Counter()  # OIG items each prosocial_check rule would skip
    split_counts = Counter(trees_kept=0, trees_dropped=0)  # OASST1 trees kept / dropped by oasst1_trees
    copies_by_file: dict[int, int] = {}
    pool = _pool(opts["num_proc"]) if opts["detect_lang"] else None
    try:
        with _create(tmp[rejects]) as rej, open(spill_path, "wb") as spill_file:
            ledger = Ledger(rej)
            spill = _Spill(spill_file, ledger, opts, pool, candidates)
            filters = Filters(fconf)
            for fi, (kind, path) in enumerate(inputs):
                key = str(path)
                if kind == "oig":
                    copies_by_file[fi] = 1 + opts["basic_repeat"] if oig_copies(path) > 1 else 1
                stream = _reader(kind, path, ledger, per_source, opts, trees, would_skip, split_counts)
                spill.take(fi, key, stream, filters, desc=f"prepare {path.name}")
                st = ledger.files[key]
                if st.lines_read == sum(st.rejected.values()):  # empty, or every line rejected
                    rej.flush()
                    raise no_usable_line(path, kind, _keep_failed_rejects(st.lines_read, tmp[rejects], rejects))
            rng = np.random.default_rng(seed)
            keep = spill.language_caps(rng, inputs)
        summary = _write_output(spill_path, tmp[out], spill.offsets, spill.file_idx, spill.lang_idx, keep,
                                copies_by_file, spill.langs, inputs, ledger, rng, opts)
        _finish_summary(summary, out=out, rejects=rejects, ledger=ledger, seed=seed, per_source=per_source,
                        opts=opts, fconf=fconf, t0=t0, dropped_convs=spill.dropped_convs)
        if any(k == "oig" for k, _ in inputs):
            summary["oig_skip_rules"] = {c: would_skip[c] for c in PROSOCIAL_CHECKS}
        if trees is not None:
            summary["oasst1_split"] = {"tree_ids_listed": len(trees), **split_counts}
        _publish(summary, tmp)
    except OSError as e:  # a full disk, a read-only folder...: one line naming the output, not a traceback
        where = next((str(t) for t, p in tmp.items() if str(p) == str(e.filename)), str(e.filename or out))
        raise BloomchatError(f"cannot write: {e.strerror or e}", where=where) from None
    finally:
        if pool is not None:
            pool.terminate()
        for p in (spill_path, *tmp.values()):
            if p.exists():
                p.unlink()
    return summary


def _filter_config(opts: dict) -> FilterConfig:
    if not opts["filters"]:
        return FilterConfig.off()
    return FilterConfig(dedup=opts["dedup"], empty_turns=opts["empty_turns"], max_turn_chars=opts["max_turn_chars"],
                        alternation=opts["alternation"], bot_last=opts["bot_last"])


def _keep_failed_rejects(lines_read: int, tmp_rejects: Path, rejects: Path) -> Path | None:
    """A failed run's rejected lines, kept apart (REJECTS-stem.failed.jsonl) so that the previous
    run's rejects file stays as it was; None when the file had no line at all."""
    if not lines_read:
        return None
    failed = rejects.with_name(rejects.name.removesuffix(".jsonl") + ".failed.jsonl")
    os.replace(tmp_rejects, failed)
    return failed


def _publish(summary: dict, tmp: dict[Path, Path]) -> None:
    """Write the summary, then move every output into place, the summary last (it vouches for the others)."""
    with _create(tmp[Path(summary["summary"])]) as f:
        f.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    for target, t in tmp.items():
        os.replace(t, target)


def _check_outputs(out: Path, rejects: Path, inputs: list[tuple[str, Path]], per_source: Any) -> Path:
    """User errors found before anything is read or written; returns the rejects path."""
    if not inputs:
        raise BloomchatError("no input: give at least one of --oig, --dolly, --oasst1, --jsonl")
    if not isinstance(per_source, int) or per_source < 1:
        raise BloomchatError(f"per_source must be a positive integer, got {per_source!r}")
    if out.suffix.lower() in (".gz", ".parquet", ".json", ".bz2", ".zst"):
        raise BloomchatError("prepare writes plain JSON Lines: name the output *.jsonl", where=str(out))
    if not out.parent.exists():
        raise BloomchatError("output folder does not exist", where=str(out.parent))
    for target in (out, rejects, summary_path(out)):
        if any(target.resolve() == p.resolve() for _, p in inputs):
            raise BloomchatError("an output path is also an input: it would overwrite it", where=str(target))
        if target.is_dir():
            raise BloomchatError("output path is a folder", where=str(target))
        if not target.parent.is_dir():
            raise BloomchatError("output folder does not exist", where=str(target.parent))
    return rejects


def _reader(kind: str, path: Path, ledger: Ledger, per_source: int, opts: dict, trees, would_skip, split_counts):
    """The reader of one input file: (conversation, lines it was built from) pairs."""
    if kind == "oig":
        return read_oig(path, ledger, per_source=per_source, normalize_tags=opts["normalize_tags"],
                        skip_sources=tuple(opts["skip_sources"] or ()), prosocial_check=opts["prosocial_check"],
                        would_skip=would_skip)
    if kind == "dolly":
        return read_dolly(path, ledger)
    if kind == "oasst1":
        return read_oasst1(path, ledger, trees=trees, split_counts=split_counts)
    return read_user_jsonl(path, ledger)


class _Spill:
    """Conversations that passed the filters: language-tagged in batches (in worker processes
    with num_proc > 1), kept or dropped by language, and spilled to a file of which only byte
    offsets, file index, line count and language index stay in memory."""

    def __init__(self, file, ledger: Ledger, opts: dict, pool, candidates):
        self.file, self.ledger, self.opts, self.pool = file, ledger, opts, pool
        self.detect = partial(langid.detect, candidates=candidates)
        self.offsets, self.file_idx, self.n_lines, self.lang_idx = array("q"), array("h"), array("i"), array("i")
        self.langs: list[str] = []
        self.lang_pos: dict[str, int] = {}
        self.dropped_convs: Counter = Counter()  # conversations per filter reason (the ledger counts lines)
        self.pending: list[tuple[int, str, Any, int]] = []  # waiting for language ID

    def drop(self, key: str, reason: str, nl: int) -> None:
        self.ledger.drop(key, reason, nl)
        self.dropped_convs[reason] += 1

    def take(self, fi: int, key: str, stream, filters: Filters, desc: str) -> None:
        """Every conversation of one input file through the filters, then language ID."""
        for conv, nl in tqdm(stream, desc=desc, unit="conv", disable=not self.opts["progress"], mininterval=0.5,
                             leave=False):
            reason = filters.reason(conv)
            if reason is not None:
                self.drop(key, reason, nl)
                continue
            self.pending.append((fi, key, conv, nl))
            if len(self.pending) >= LANGID_BATCH:
                self.flush()
        self.flush()

    def language_caps(self, rng: np.random.Generator, inputs: list[tuple[str, Path]]) -> np.ndarray:
        """Which spilled conversations survive max_per_lang / balance_langs; the rest counted as lang_cap."""
        keep = _language_caps(np.frombuffer(self.lang_idx, dtype=np.int32), len(self.langs), self.opts, rng)
        for i in np.flatnonzero(~keep):
            self.ledger.unkeep(str(inputs[self.file_idx[i]][1]), "lang_cap", self.n_lines[i])
            self.dropped_convs["lang_cap"] += 1
        return keep

    def flush(self) -> None:
        opts = self.opts
        need = [c for _, _, c, _ in self.pending if c.lang is None] if opts["detect_lang"] else []
        if need:
            texts = [langid.conversation_text(t.text for t in c.turns) for c in need]
            codes = (self.pool.map(self.detect, texts, chunksize=256) if self.pool is not None
                     else [self.detect(t) for t in texts])
            for c, code in zip(need, codes):
                c.lang = code
        for fi, key, conv, nl in self.pending:
            if opts["keep_langs"] and not langid.lang_matches(conv.lang, opts["keep_langs"]):
                self.drop(key, "lang_not_kept", nl)
                continue
            if opts["drop_langs"] and langid.lang_matches(conv.lang, opts["drop_langs"]):
                self.drop(key, "lang_dropped", nl)
                continue
            self.ledger.keep(key, nl)
            code = conv.lang or langid.UNDETERMINED
            if code not in self.lang_pos:
                self.lang_pos[code] = len(self.langs)
                self.langs.append(code)
            self.offsets.append(self.file.tell())
            self.file_idx.append(fi)
            self.n_lines.append(nl)
            self.lang_idx.append(self.lang_pos[code])
            self.file.write(_json_line(conv.to_record()))
        self.pending.clear()


def _create(path: Path):
    """A new text file for an output (lone surrogates in rejected records written escaped)."""
    return open(path, "w", encoding="utf-8", errors="backslashreplace")


def _finish_summary(summary: dict, *, out, rejects, ledger, seed, per_source, opts, fconf, t0, dropped_convs) -> None:
    summary.update(
        out=str(out),
        summary=str(summary_path(out)),
        rejects=str(rejects),
        rejects_written=ledger.rejects_written,
        seed=seed,
        per_source=per_source,
        options={k: _jsonable(v) for k, v in opts.items() if k not in ("progress", "num_proc")},
        filters=vars(fconf),
        langid=langid.detector_name(),
        seconds=round(time.perf_counter() - t0, 3),
        filtered_conversations=dict(dropped_convs.most_common()),
    )
    files = [s.to_dict() for s in ledger.files.values()]
    summary["files"] = files
    summary["balanced"] = all(f["balanced"] for f in files)


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else str(v) if isinstance(v, os.PathLike) else v


def _json_line(rec: dict) -> bytes:
    """One UTF-8 JSON line; a text with a lone surrogate (legal as a JSON escape) stays escaped."""
    try:
        return json.dumps(rec, ensure_ascii=False).encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(rec).encode("ascii") + b"\n"


def _pool(num_proc: int):
    """Worker processes for language ID (each loads the ~100 MB model once), or None for one process."""
    if num_proc <= 1:
        return None
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(method).Pool(num_proc)


def _language_caps(lang_idx: np.ndarray, n_langs: int, opts: dict, rng: np.random.Generator) -> np.ndarray:
    """Which kept conversations survive `max_per_lang` / `balance_langs` (random, seeded)."""
    keep = np.ones(len(lang_idx), dtype=bool)
    counts = np.bincount(lang_idx, minlength=n_langs)
    caps = []
    if opts["max_per_lang"] is not None:
        caps.append(opts["max_per_lang"])
    if opts["balance_langs"] and len(counts):
        caps.append(int(counts[counts > 0].min()))
    if not caps:
        return keep
    cap = min(caps)
    for li in range(n_langs):
        if counts[li] > cap:
            idx = np.flatnonzero(lang_idx == li)
            drop = rng.choice(idx, size=len(idx) - cap, replace=False)
            keep[drop] = False
    return keep


def _write_output(spill_path, tmp_out, offsets, file_idx, lang_idx, keep, copies_by_file, langs, inputs, ledger, rng, opts):
    fidx = np.frombuffer(file_idx, dtype=np.int16)
    copies = np.ones(len(fidx), dtype=np.int64)
    for fi, c in copies_by_file.items():
        copies[fidx == fi] = c
    copies[~keep] = 0
    order = np.repeat(np.arange(len(fidx)), copies)  # record i appears copies[i] times
    if opts["shuffle"]:
        rng.shuffle(order)
    seen_copy = Counter() if any(c > 1 for c in copies_by_file.values()) else None
    by_source: Counter = Counter()
    by_lang: Counter = Counter()
    per_file_out: Counter = Counter()
    with open(spill_path, "rb") as spill, open(tmp_out, "wb") as f:
        for i in tqdm(order, desc="write", unit="conv", disable=not opts["progress"], mininterval=0.5, leave=False):
            spill.seek(offsets[i])
            line = spill.readline()
            fi = int(fidx[i])
            if seen_copy is not None and copies_by_file.get(fi, 1) > 1:
                k = seen_copy[i]
                seen_copy[i] += 1
                if k:  # copies after the first get their own id
                    rec = json.loads(line)
                    rec["id"] = f"{rec.get('id')}#{k}"
                    line = _json_line(rec)
            f.write(line)
            per_file_out[fi] += 1
            by_lang[langs[lang_idx[i]]] += 1
            by_source[_source_of(inputs[fi])] += 1
    for fi, n in per_file_out.items():
        ledger.files[str(inputs[fi][1])].conversations_out = n
    return {
        "conversations": int(len(order)),
        "unique_conversations": int(keep.sum()),
        "by_source": dict(by_source.most_common()),
        "by_lang": dict(by_lang.most_common()),
        "filtered_lines": dict(sum((s.filtered for s in ledger.files.values()), Counter()).most_common()),
        "rejected_lines": dict(sum((s.rejected for s in ledger.files.values()), Counter()).most_common()),
    }


def _source_of(inp: tuple[str, Path]) -> str:
    kind, path = inp
    return {"oig": f"oig/{file_stem(path)}", "jsonl": f"user/{file_stem(path)}"}.get(kind, kind)
