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
from bloomchat.data.readers import (
    OIG_BASIC_COPIES,
    OIG_PER_SOURCE,
    OIG_SKIP_SOURCES,
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

#: Options `prepare(**options)` accepts, with defaults (the CLI flags map onto these names).
DEFAULT_OPTIONS: dict[str, Any] = {
    "filters": True,  # False: every filter off (BLOOMChat-exact output)
    "dedup": True,
    "empty_turns": True,
    "max_turn_chars": FilterConfig().max_turn_chars,
    "alternation": True,
    "bot_last": True,
    "normalize_tags": False,  # OIG: write `Rosey:` bot tags as `<bot>:` in the completion text
    "skip_sources": OIG_SKIP_SOURCES,
    # OIG: where skip_sources is looked up. "meta_or_metadata": `metadata` (OIG's files), else `meta`;
    # "meta": only `meta`, as BLOOMChat's script did (so on OIG's files it skips nothing). The summary's
    # oig_skip_rules counts what each rule would skip.
    "prosocial_check": "meta_or_metadata",
    # OASST1: keep only the message trees of one split, read from this file (HF oasst1's
    # data/train-*.parquet or any file with message_tree_id fields, or a .txt of tree ids); None: all.
    "oasst1_trees": None,
    "basic_repeat": OIG_BASIC_COPIES - 1,  # extra copies of each unified_basic item (BLOOMChat: 1000)
    "detect_lang": True,
    "lang_candidates": None,  # None: langid.DEFAULT_CANDIDATES; "all"; or a list of codes
    "keep_langs": None,  # e.g. ["zh", "en"]: every other language is dropped
    "drop_langs": None,
    "max_per_lang": None,  # cap on conversations per language (random, seeded)
    "balance_langs": False,  # cap every language at the smallest language's count
    "shuffle": True,
    "num_proc": 1,  # processes for language ID, the costly step (~4,800 Dolly conversations/s each)
    "progress": True,
}


def summary_path(out: Path) -> Path:
    return out.with_name(out.stem + ".summary.json")


def rejects_path(out: Path) -> Path:
    return out.with_name(out.stem + ".rejects.jsonl")


def _as_paths(name: str, value: Any) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    return [Path(v) for v in value]


def _options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise BloomchatError(f"unknown prepare option(s): {', '.join(unknown)} (known: {', '.join(DEFAULT_OPTIONS)})")
    opts = {**DEFAULT_OPTIONS, **options}
    if not isinstance(opts["basic_repeat"], int) or opts["basic_repeat"] < 0:
        raise BloomchatError(f"basic_repeat must be an integer >= 0, got {opts['basic_repeat']!r}")
    if not isinstance(opts["num_proc"], int) or opts["num_proc"] < 1:
        raise BloomchatError(f"num_proc must be a positive integer, got {opts['num_proc']!r}")
    for k in ("max_per_lang", "max_turn_chars"):
        if opts[k] is not None and (not isinstance(opts[k], int) or opts[k] < 1):
            raise BloomchatError(f"{k} must be a positive integer, got {opts[k]!r}")
    if opts["prosocial_check"] not in PROSOCIAL_CHECKS:
        raise BloomchatError(f"prosocial_check must be one of {', '.join(PROSOCIAL_CHECKS)}, got {opts['prosocial_check']!r}")
    if opts["oasst1_trees"] is not None and not isinstance(opts["oasst1_trees"], (str, os.PathLike)):
        raise BloomchatError(f"oasst1_trees must be a file path, got {opts['oasst1_trees']!r}")
    for k in ("keep_langs", "drop_langs"):
        if isinstance(opts[k], str):
            opts[k] = [opts[k]]
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
    `options` are DEFAULT_OPTIONS' keys; an unknown one is a BloomchatError.
    """
    t0 = time.perf_counter()
    opts = _options(options)
    out = Path(out)
    inputs: list[tuple[str, Path]] = []
    for kind, value in (("oig", oig), ("dolly", dolly), ("oasst1", oasst1), ("jsonl", jsonl)):
        inputs += [(kind, check_file(p)) for p in _as_paths(kind, value)]
    if not inputs:
        raise BloomchatError("no input: give at least one of --oig, --dolly, --oasst1, --jsonl")
    if not isinstance(per_source, int) or per_source < 1:
        raise BloomchatError(f"per_source must be a positive integer, got {per_source!r}")
    if out.suffix.lower() in (".gz", ".parquet", ".json", ".bz2", ".zst"):
        raise BloomchatError("prepare writes plain JSON Lines: name the output *.jsonl", where=str(out))
    if not out.parent.exists():
        raise BloomchatError("output folder does not exist", where=str(out.parent))
    rejects = Path(rejects) if rejects is not None else rejects_path(out)
    for target in (out, rejects, summary_path(out)):
        if any(target.resolve() == p.resolve() for _, p in inputs):
            raise BloomchatError("an output path is also an input: it would overwrite it", where=str(target))
        if target.is_dir():
            raise BloomchatError("output path is a folder", where=str(target))
        if not target.parent.is_dir():
            raise BloomchatError("output folder does not exist", where=str(target.parent))
    trees = read_tree_ids(Path(opts["oasst1_trees"])) if opts["oasst1_trees"] is not None else None
    if trees is not None and not oasst1:
        raise BloomchatError("oasst1_trees filters OASST1 trees, but there is no --oasst1 input")

    if opts["filters"]:
        fconf = FilterConfig(
            dedup=opts["dedup"], empty_turns=opts["empty_turns"], max_turn_chars=opts["max_turn_chars"],
            alternation=opts["alternation"], bot_last=opts["bot_last"],
        )
    else:
        fconf = FilterConfig.off()
    filters = Filters(fconf)
    candidates = langid.resolve_candidates(opts["lang_candidates"])

    spill_path = out.with_name(f".{out.name}.{os.getpid()}.spill")
    # every output is written to a temporary name next to it and moved into place only once the
    # whole run succeeded: a failed run leaves the previous out / rejects / summary untouched
    tmp = {t: t.with_name(f".{t.name}.{os.getpid()}.tmp") for t in (out, rejects, summary_path(out))}
    tmp_out = tmp[out]
    would_skip: Counter = Counter()  # OIG items each prosocial_check rule would skip
    split_counts: Counter = Counter()  # OASST1 trees kept / dropped by oasst1_trees
    offsets, file_idx, n_lines, lang_idx = array("q"), array("h"), array("i"), array("i")
    langs: list[str] = []
    lang_pos: dict[str, int] = {}
    copies_by_file: dict[int, int] = {}
    dropped_convs: Counter = Counter()  # conversations per filter reason (the ledger counts lines)
    pending: list[tuple[int, str, Any, int]] = []  # passed the filters, waiting for language ID
    detect = partial(langid.detect, candidates=candidates)
    pool = _pool(opts["num_proc"]) if opts["detect_lang"] else None

    def drop(key: str, reason: str, nl: int) -> None:
        ledger.drop(key, reason, nl)
        dropped_convs[reason] += 1

    def flush() -> None:
        """Tag the pending conversations' languages (in worker processes with num_proc > 1), then keep or drop."""
        need = [c for _, _, c, _ in pending if c.lang is None] if opts["detect_lang"] else []
        if need:
            texts = [langid.conversation_text(t.text for t in c.turns) for c in need]
            codes = pool.map(detect, texts, chunksize=256) if pool is not None else [detect(t) for t in texts]
            for c, code in zip(need, codes):
                c.lang = code
        for fi, key, conv, nl in pending:
            if opts["keep_langs"] and not langid.lang_matches(conv.lang, opts["keep_langs"]):
                drop(key, "lang_not_kept", nl)
                continue
            if opts["drop_langs"] and langid.lang_matches(conv.lang, opts["drop_langs"]):
                drop(key, "lang_dropped", nl)
                continue
            ledger.keep(key, nl)
            code = conv.lang or langid.UNDETERMINED
            if code not in lang_pos:
                lang_pos[code] = len(langs)
                langs.append(code)
            offsets.append(spill.tell())
            file_idx.append(fi)
            n_lines.append(nl)
            lang_idx.append(lang_pos[code])
            spill.write(_json_line(conv.to_record()))
        pending.clear()

    try:
        with _create(tmp[rejects]) as rej, open(spill_path, "wb") as spill:
            ledger = Ledger(rej)
            for fi, (kind, path) in enumerate(inputs):
                key = str(path)
                if kind == "oig":
                    stream = read_oig(path, ledger, per_source=per_source, normalize_tags=opts["normalize_tags"],
                                      skip_sources=tuple(opts["skip_sources"] or ()),
                                      prosocial_check=opts["prosocial_check"], would_skip=would_skip)
                    copies_by_file[fi] = 1 + opts["basic_repeat"] if oig_copies(path) > 1 else 1
                elif kind == "dolly":
                    stream = read_dolly(path, ledger)
                elif kind == "oasst1":
                    stream = read_oasst1(path, ledger, trees=trees, split_counts=split_counts)
                else:
                    stream = read_user_jsonl(path, ledger)
                for conv, nl in tqdm(stream, desc=f"prepare {path.name}", unit="conv", disable=not opts["progress"],
                                     mininterval=0.5, leave=False):
                    reason = filters.reason(conv)
                    if reason is not None:
                        drop(key, reason, nl)
                        continue
                    pending.append((fi, key, conv, nl))
                    if len(pending) >= LANGID_BATCH:
                        flush()
                flush()
                st = ledger.files[key]
                if st.lines_read == sum(st.rejected.values()):  # empty, or every line rejected
                    failed = None
                    if st.lines_read:  # keep this run's reasons apart: the previous rejects file stays as it was
                        rej.flush()
                        failed = rejects.with_name(rejects.name.removesuffix(".jsonl") + ".failed.jsonl")
                        os.replace(tmp[rejects], failed)
                    raise no_usable_line(path, kind, failed)

            rng = np.random.default_rng(seed)
            keep = _language_caps(np.frombuffer(lang_idx, dtype=np.int32), len(langs), opts, rng)
            for i in np.flatnonzero(~keep):
                ledger.unkeep(str(inputs[file_idx[i]][1]), "lang_cap", n_lines[i])
                dropped_convs["lang_cap"] += 1
        summary = _write_output(
            spill_path, tmp_out, offsets, file_idx, lang_idx, keep, copies_by_file, langs, inputs, ledger, rng, opts
        )
        _finish_summary(summary, out=out, rejects=rejects, ledger=ledger, seed=seed, per_source=per_source,
                        opts=opts, fconf=fconf, t0=t0, dropped_convs=dropped_convs)
        if any(k == "oig" for k, _ in inputs):
            summary["oig_skip_rules"] = {c: would_skip[c] for c in PROSOCIAL_CHECKS}
        if trees is not None:
            summary["oasst1_split"] = {"tree_ids_listed": len(trees), "trees_kept": split_counts["trees_kept"],
                                       "trees_dropped": split_counts["trees_dropped"]}
        with _create(tmp[summary_path(out)]) as f:
            f.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        for target in (out, rejects, summary_path(out)):  # the summary last: it vouches for the other two
            os.replace(tmp[target], target)
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
