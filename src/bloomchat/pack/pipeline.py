"""`pack()`: prepared JSONL -> tokenised, loss-masked, packed parquet shards + stats.json.

    bloomchat pack prepared.jsonl --tokenizer bigscience/bloom-560m -o packed/ --packing bfd
    python -c "from bloomchat.pack import pack; print(pack('prepared.jsonl', 'tok_dir', 'packed'))"

Streaming end to end: lines are read in chunks, tokenised (in `num_proc` worker processes,
at most 2 chunks each in flight), split train/dev by a hash of the tokens (so every copy of a
conversation lands on one side), cut or dropped when overlong, packed and written in bounded row
groups. Results are consumed in input order, so the shards are byte-for-byte the same for any
`num_proc`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator

from bloomchat.chat_format import CHAT_TEMPLATE
from bloomchat.chat_tokens import check_base_template, check_tokenizer
from bloomchat.errors import BloomchatError
from bloomchat.pack.encode import (INVALID, NO_BOT_TURN, TEXT_CHANGES, Encoded, Skipped, encode_lines, init_worker,
                                   worker_encode)
from bloomchat.pack.options import PackOptions
from bloomchat.pack.packers import Piece, make_packer
from bloomchat.pack.shards import SPLITS, ShardWriter
from bloomchat.pack.stats import STATS_FILE, SplitStats, tokenizer_info

#: Suffix of `bloomchat prepare`'s rejects file, skipped when a directory is given as input.
REJECTS_SUFFIX = ".rejects.jsonl"
MAX_EXAMPLES = 10  # skipped lines listed by where in stats.json


def resolve_inputs(inputs: str | Path | list) -> list[Path]:
    """Files to read: each input is a prepared JSONL file (.jsonl or .jsonl.gz), or a directory
    of them."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise BloomchatError("no input files given")
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            # prepare writes OUT.rejects.jsonl next to OUT.jsonl: rejected raw lines, not conversations
            found = sorted(f for pattern in ("*.jsonl", "*.jsonl.gz") for f in p.glob(pattern)
                           if not f.name.endswith((REJECTS_SUFFIX, REJECTS_SUFFIX + ".gz")))
            if not found:
                raise BloomchatError("directory has no *.jsonl or *.jsonl.gz prepared files", where=str(p))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise BloomchatError("input file not found", where=str(p))
    return files


def _resolve_tokenizer(tokenizer, chat_format: str):
    from bloomchat.models import load_tokenizer

    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    if not callable(tokenizer) or not hasattr(tokenizer, "get_vocab"):
        raise BloomchatError(f"not a tokenizer: {type(tokenizer).__name__}")
    check_tokenizer(tokenizer)  # fast (offsets), EOS text read back as the EOS token
    if chat_format == "base":
        check_base_template(tokenizer)
    return tokenizer


def _lines(f, path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered raw lines; a broken .gz is a one-line error naming the file and line."""
    lineno = 0
    try:
        for lineno, raw in enumerate(f, 1):
            yield lineno, raw
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut-off file an EOFError
        raise BloomchatError(f"cannot read compressed data after line {lineno}: {e}", where=str(path)) from None


def _chunks(files: list[Path], chunk_lines: int) -> Iterator[tuple[Path, str, list[tuple[int, bytes]], int]]:
    """(file, label, [(line number, raw line)], bytes) chunks, reading each file once, lazily."""
    for path in files:
        label = path.name
        buf: list[tuple[int, bytes]] = []
        done = 0  # bytes of the file (compressed, for .gz) accounted for so far: the progress bar's unit
        with open(path, "rb") as raw_file:
            f = gzip.GzipFile(fileobj=raw_file) if path.name.endswith(".gz") else raw_file
            nbytes = 0
            for lineno, raw in _lines(f, path):
                buf.append((lineno, raw))
                nbytes += len(raw)
                if len(buf) >= chunk_lines:
                    pos = raw_file.tell() if f is not raw_file else done + nbytes
                    yield path, label, buf, pos - done
                    buf, nbytes, done = [], 0, pos
            if buf:
                pos = raw_file.tell() if f is not raw_file else done + nbytes
                yield path, label, buf, pos - done


def _encoded_chunks(files, tokenizer, num_proc: int, chunk_lines: int, chat_format: str, loss_on: str):
    """(file, results, bytes) in input order, tokenised in-process or by a bounded worker pool."""
    chunks = _chunks(files, chunk_lines)
    if num_proc <= 1:
        for path, label, lines, nbytes in chunks:
            yield path, encode_lines(lines, label, tokenizer, chat_format=chat_format, loss_on=loss_on), nbytes
        return
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # fork after Rust threads: keep quiet
    with ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=init_worker, initargs=(tokenizer,)) as ex:
        inflight: deque = deque()
        for path, label, lines, nbytes in chunks:
            inflight.append((path, ex.submit(worker_encode, lines, label, chat_format, loss_on), nbytes))
            if len(inflight) >= 2 * num_proc:
                p, fut, n = inflight.popleft()
                yield p, fut.result(), n
        while inflight:
            p, fut, n = inflight.popleft()
            yield p, fut.result(), n


def dev_side(key: str, seed: int, dev_ratio: float) -> bool:
    """True when the conversation with this key (`Encoded.split_key`, a digest of its tokens) goes
    to dev: a hash, so the same for any chunking, and the same for every copy of a conversation."""
    if dev_ratio <= 0:
        return False
    h = hashlib.blake2b(f"{seed}\0{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < dev_ratio


def split_overlong(enc: Encoded, max_seq_length: int) -> list[Piece]:
    """Cut a conversation into consecutive pieces of at most max_seq_length tokens."""
    n = len(enc.input_ids)
    return [Piece(enc.input_ids[s:s + max_seq_length], enc.loss_mask[s:s + max_seq_length])
            for s in range(0, n, max_seq_length)]


#: What a pack run owns in its output directory (replaced as a whole by the next run).
OUTPUT_ENTRIES = ("train", "dev", "lengths.png")


def _work_dir(out_dir: Path) -> Path:
    """A fresh directory next to the output (same filesystem, so moving into place is a rename)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BloomchatError("output path exists and is not a directory", where=str(out_dir))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.pack-tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move a finished run into place. Until here an earlier output stays untouched; while entries
    move, its stats.json is gone first and the new one comes last, so a half-moved dir is never valid."""
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    (out_dir / STATS_FILE).unlink(missing_ok=True)
    old = tmp / ".previous"
    old.mkdir()
    for name in OUTPUT_ENTRIES:
        if (out_dir / name).exists():
            (out_dir / name).rename(old / name)
        if (tmp / name).exists():
            (tmp / name).rename(out_dir / name)
    (tmp / STATS_FILE).replace(out_dir / STATS_FILE)
    shutil.rmtree(tmp)


_D = PackOptions()  # the defaults below come from the one declaration of each setting


def pack(inputs: str | Path | list, tokenizer, out_dir: str | Path, *, max_seq_length: int = _D.max_seq_length,
         packing: str = _D.packing, dev_ratio: float = _D.dev_ratio, num_proc: int = _D.num_proc,
         seed: int = _D.seed, overlong: str = _D.overlong, chat_format: str = _D.chat_format,
         loss_on: str = _D.loss_on, **options) -> dict:
    """Tokenise and pack prepared files into OUTDIR/{train,dev}/*.parquet; returns stats.json's dict.

    tokenizer: HF tokenizer name/dir or object. Every other setting (its type, default and doc) is
    declared in bloomchat.pack.options.PackOptions; the common ones are named here (train's
    stage_data reads them from this signature), the rest (window, shard_rows, progress ...) come
    through **options.

    The run writes into a temporary directory next to OUTDIR and moves into place only when it
    succeeded, so a failing run leaves an earlier output as it was.
    """
    opts = PackOptions.check({"max_seq_length": max_seq_length, "packing": packing, "dev_ratio": dev_ratio,
                              "num_proc": num_proc, "seed": seed, "overlong": overlong, "chat_format": chat_format,
                              "loss_on": loss_on, **options})
    files = resolve_inputs(inputs)
    tok = _resolve_tokenizer(tokenizer, opts.chat_format)
    out = Path(out_dir)
    tmp = _work_dir(out)
    try:
        result = _pack_into(tmp, files, tok, opts)
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return result


@dataclass
class _Tally:
    """What a pack run counts besides the per-split statistics: lines read and skipped, text fixes,
    overlong conversations."""

    dropped: Counter = field(default_factory=Counter)
    changes: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_EXAMPLES skipped lines
    lines_read: int = 0
    overlong_convs: int = 0
    overlong_pieces: int = 0
    trailing_removed: int = 0
    boundary_tokens: int = 0
    changed_records: int = 0


def _admit(r: Encoded | Skipped, path: Path, tally: _Tally, skip_invalid: bool) -> bool:
    """Count one encoded line; False when it is skipped (a line that is no prepared record is an error
    unless skip_invalid)."""
    tally.lines_read += 1
    if r.changes:
        tally.changed_records += 1
        tally.changes.update(r.changes)
    if isinstance(r, Skipped):
        where = f"{path}:{r.lineno}"
        if r.reason == INVALID and not skip_invalid:
            raise BloomchatError(
                f"{r.message}; a prepared file has one JSON conversation a line with 'turns' "
                "(run `bloomchat prepare`), or pass --skip-invalid to count and skip such lines",
                where=where)
        tally.dropped[r.reason] += 1
        if len(tally.examples) < MAX_EXAMPLES:
            tally.examples.append({"where": where, "reason": r.reason, "message": r.message})
        return False
    if r.trailing_prompt_tokens:
        tally.trailing_removed += 1
    tally.boundary_tokens += r.boundary_tokens
    return True


def _fitted_pieces(r: Encoded, max_seq_length: int, overlong: str, tally: _Tally) -> list[Piece] | None:
    """The conversation as pieces of at most max_seq_length tokens that carry loss; None when dropped."""
    if len(r.input_ids) <= max_seq_length:
        return [Piece(r.input_ids, r.loss_mask)]
    tally.overlong_convs += 1
    if overlong == "drop":
        tally.dropped["overlong"] += 1
        return None
    pieces = split_overlong(r, max_seq_length)
    kept = [p for p in pieces if p.loss_mask.any()]
    tally.dropped["pieces_without_loss"] += len(pieces) - len(kept)
    tally.overlong_pieces += len(kept)
    return kept


def _pack_into(out: Path, files, tok, opts: PackOptions) -> dict:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    max_seq_length = opts.max_seq_length
    packers = {s: make_packer(opts.packing, max_seq_length, seed=opts.seed + i, window=opts.window)
               for i, s in enumerate(SPLITS)}
    writers = {s: ShardWriter(out, s, shard_rows=opts.shard_rows, row_group_rows=opts.row_group_rows)
               for s in SPLITS}
    stats = {s: SplitStats(max_seq_length) for s in SPLITS}
    tally = _Tally()

    def emit(split, rows):
        for row in rows:
            stats[split].add_row(row)
            writers[split].write(row)

    total_bytes = sum(f.stat().st_size for f in files)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="pack", disable=not opts.progress)
    try:
        for path, results, nbytes in _encoded_chunks(files, tok, opts.num_proc, opts.chunk_lines, opts.chat_format,
                                                     opts.loss_on):
            for r in results:
                if not _admit(r, path, tally, opts.skip_invalid):
                    continue
                split = "dev" if dev_side(r.split_key, opts.seed, opts.dev_ratio) else "train"
                kept = _fitted_pieces(r, max_seq_length, opts.overlong, tally)
                if kept is None:
                    continue
                stats[split].add_conversation(len(r.input_ids), r.source, r.lang)
                for piece in kept:
                    stats[split].add_piece(len(piece))
                    emit(split, packers[split].add(piece))
            bar.update(nbytes)
        for s in SPLITS:
            emit(s, packers[s].flush())
    finally:
        bar.close()
        shards = {s: writers[s].close() for s in SPLITS}

    if stats["train"].sequences == 0:
        raise BloomchatError(
            f"nothing to train on: {tally.lines_read} records read, skipped {dict(tally.dropped) or 'none'}",
            where=", ".join(str(f) for f in files))
    result = _stats_dict(stats, tally, tok, files, shards, out, opts, elapsed=time.perf_counter() - t0)
    if opts.plot:
        from bloomchat.pack.plot import plot_lengths

        plot_lengths(result, out / "lengths.png")
    (out / STATS_FILE).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


def _stats_dict(stats, tally: _Tally, tok, files, shards, out, opts: PackOptions, *, elapsed) -> dict[str, Any]:
    from bloomchat import __version__

    max_seq_length, chat_format = opts.max_seq_length, opts.chat_format
    tr, dv = stats["train"], stats["dev"]
    sequences = tr.sequences + dv.sequences
    tokens = tr.tokens + dv.tokens
    n_dropped = tally.dropped[NO_BOT_TURN] + tally.dropped[INVALID] + tally.dropped["overlong"]
    return {
        "format_version": 1,
        "created_by": f"bloomchat {__version__}",
        "sequences": sequences,
        "conversations": tr.conversations + dv.conversations,
        "tokens": tokens,
        "loss_tokens": tr.loss_tokens + dv.loss_tokens,
        "padding_fraction": round(1.0 - tokens / (sequences * max_seq_length), 6) if sequences else 0.0,
        "dropped": n_dropped,  # records not trained on at all
        "dropped_by_reason": {
            NO_BOT_TURN: tally.dropped[NO_BOT_TURN],  # no reply: no loss token
            INVALID: tally.dropped[INVALID],  # only with skip_invalid
            "overlong": tally.dropped["overlong"],  # only with overlong="drop"
            "pieces_without_loss": tally.dropped["pieces_without_loss"],  # prompt-only parts of split ones
        },
        "skipped_examples": tally.examples,
        "records_read": tally.lines_read,
        "overlong": {"action": opts.overlong, "conversations": tally.overlong_convs,
                     "pieces_kept": tally.overlong_pieces},
        "trailing_prompt_turns_removed": tally.trailing_removed,
        "chat_format": chat_format,
        # the template whose rendering these ids are (bloomchat: CHAT_TEMPLATE; base: the tokenizer's own):
        # the trained model's tokenizer must carry it, so engines build the prompts training saw
        "chat_template": CHAT_TEMPLATE if chat_format == "bloomchat" else tok.chat_template,
        "loss_on": opts.loss_on,
        # loss tokens that also cover prompt characters (a merge across a span edge; see chat_tokens)
        "boundary_tokens": tally.boundary_tokens,
        # how the parsed turns trained on differ from the records' verbatim BLOOMChat text
        # (loss_on=replies only; loss_on=conversation trains the verbatim text)
        "text_changes": {"records": tally.changed_records, "by_reason": {k: tally.changes[k] for k in TEXT_CHANGES}},
        "split": {"dev_ratio": opts.dev_ratio, "train": tr.to_dict(), "dev": dv.to_dict()},
        "max_seq_length": max_seq_length,
        "packing": opts.packing,
        "window": opts.window if opts.packing == "bfd" else None,
        "seed": opts.seed,
        "tokenizer": tokenizer_info(tok),
        "inputs": [str(f) for f in files],
        "shards": {s: [str(p.relative_to(out)) for p in shards[s]] for s in SPLITS},
        "columns": {"input_ids": "list<int32>", "loss_mask": "list<int8>", "segment_ids": "list<int16>"},
        "timing": {"seconds": round(elapsed, 3), "tokens_per_s": round(tokens / elapsed) if elapsed else None},
    }


__all__ = ["pack", "resolve_inputs", "dev_side", "split_overlong"]
