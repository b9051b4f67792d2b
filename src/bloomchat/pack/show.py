"""See what training will learn from: packed rows decoded, loss-bearing spans marked.

    bloomchat pack-show packed/ --rows 2                 # terminal: loss spans in green
    bloomchat pack-show packed/ --rows 20 --html rows.html

Spans come straight from loss_mask and segment_ids (no re-parsing of text), so this shows the
mask exactly as the trainer will use it. In plain text, loss spans are written ⟦like this⟧.
"""

from __future__ import annotations

import html
import itertools
from pathlib import Path
from typing import Iterator

import numpy as np

from bloomchat.errors import BloomchatError
from bloomchat.pack.shards import iter_rows, shard_files
from bloomchat.pack.stats import read_stats

Span = tuple[str, bool]  # (decoded text, carries loss)


def row_segments(row: dict[str, np.ndarray], tokenizer) -> list[list[Span]]:
    """Per conversation in the row: its text cut into runs of equal loss flag, decoded."""
    out = []
    ids, mask, seg = row["input_ids"], row["loss_mask"], row["segment_ids"]
    for k in range(1, int(seg.max()) + 1):
        sel = seg == k
        spans: list[Span] = []
        conv_ids = ids[sel].tolist()
        done, text = 0, ""  # decoded in context: a SentencePiece decoder strips a leading "▁" only at the start
        for loss, group in itertools.groupby(zip(conv_ids, mask[sel].tolist()), key=lambda t: t[1]):
            n = done + len(list(group))
            upto = tokenizer.decode(conv_ids[:n], skip_special_tokens=False)
            piece = upto[len(text):] if upto.startswith(text) else tokenizer.decode(conv_ids[done:n],
                                                                                    skip_special_tokens=False)
            spans.append((piece, bool(loss)))
            done, text = n, upto
        out.append(spans)
    return out


def iter_shown(out_dir: str | Path, tokenizer, *, split: str = "train", start: int = 0,
               rows: int = 1) -> Iterator[tuple[int, dict, list[list[Span]]]]:
    if not shard_files(out_dir, split):
        raise BloomchatError(f"no {split} shards", where=str(out_dir))
    for i, row in enumerate(itertools.islice(iter_rows(out_dir, split), start, start + rows), start):
        yield i, row, row_segments(row, tokenizer)


def plain(i: int, row: dict, segs: list[list[Span]]) -> str:
    lines = [f"=== row {i}: {len(row['input_ids'])} tokens, {int(row['loss_mask'].sum())} with loss, "
             f"{len(segs)} conversation(s)"]
    for k, spans in enumerate(segs, 1):
        lines.append(f"--- conversation {k}")
        lines.append("".join(f"⟦{t}⟧" if loss else t for t, loss in spans))
    return "\n".join(lines)


def write_html(path: Path, shown: list[tuple[int, dict, list[list[Span]]]], stats: dict) -> Path:
    parts = [
        "<!doctype html><meta charset='utf-8'><title>bloomchat packed rows</title><style>"
        "body{font-family:sans-serif;max-width:70em;margin:auto}pre{white-space:pre-wrap;border:1px solid #ccc;"
        "padding:.5em;margin:.3em 0}.l{background:#cdeccd}.row{margin:1.5em 0}</style>",
        f"<h1>Packed rows ({html.escape(stats['packing'])}, max {stats['max_seq_length']} tokens)</h1>",
        "<p>Green: tokens that carry loss (bot replies and their EOS). Each box is one conversation.</p>",
    ]
    for i, row, segs in shown:
        parts.append(f"<div class='row'><h3>row {i}: {len(row['input_ids'])} tokens, "
                     f"{int(row['loss_mask'].sum())} with loss</h3>")
        for spans in segs:
            body = "".join(f"<span class='l'>{html.escape(t)}</span>" if loss else html.escape(t) for t, loss in spans)
            parts.append(f"<pre>{body}</pre>")
        parts.append("</div>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def load_stats_tokenizer(out_dir: str | Path, tokenizer=None):
    """The given tokenizer, else the one stats.json names; checked against the shards either way."""
    from bloomchat.models import load_tokenizer
    from bloomchat.pack.stats import check_tokenizer_matches

    stats = read_stats(out_dir)
    tok = load_tokenizer(tokenizer or stats["tokenizer"]["name"])
    check_tokenizer_matches(out_dir, tok)
    return stats, tok
