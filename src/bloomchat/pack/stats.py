"""`stats.json` of a pack run: counting while packing, reading it back, and the tokenizer check.

Training calls `check_tokenizer_matches(out_dir, tokenizer)` before it reads a shard, so shards
made with another vocabulary are refused instead of silently training on wrong ids.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from bloomchat.errors import BloomchatError
from bloomchat.pack.packers import GreedyFill, Row

STATS_FILE = "stats.json"
#: Width of the length-histogram bins written to stats.json (2048 / 64 = 32 bins at 2048).
HIST_BIN = 64


class SplitStats:
    """Counts for one split (train or dev), updated row by row and conversation by conversation."""

    def __init__(self, max_seq_length: int):
        self.max_seq_length = max_seq_length
        self.sequences = 0
        self.conversations = 0
        self.pieces = 0
        self.tokens = 0
        self.loss_tokens = 0
        self.by_source: Counter = Counter()
        self.by_lang: Counter = Counter()
        self.fill = GreedyFill(max_seq_length)
        self.row_hist: Counter = Counter()
        self.conv_hist: Counter = Counter()

    def add_conversation(self, n_tokens: int, source: str, lang: str | None) -> None:
        self.conversations += 1
        self.by_source[source] += 1
        self.by_lang[lang or "unknown"] += 1
        self.conv_hist[n_tokens // HIST_BIN] += 1

    def add_piece(self, n_tokens: int) -> None:
        self.pieces += 1
        self.fill.add(n_tokens)

    def add_row(self, row: Row) -> None:
        n = len(row)
        self.sequences += 1
        self.tokens += n
        self.loss_tokens += int(row.loss_mask.sum())
        self.row_hist[(n - 1) // HIST_BIN] += 1

    def padding_fraction(self) -> float:
        return 1.0 - self.tokens / (self.sequences * self.max_seq_length) if self.sequences else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequences": self.sequences,
            "conversations": self.conversations,
            "pieces": self.pieces,
            "tokens": self.tokens,
            "loss_tokens": self.loss_tokens,
            "padding_fraction": round(self.padding_fraction(), 6),
            # The same pieces packed by the simple packers, counted on lengths: the fill gained.
            "padding_fraction_single": round(self.fill.padding(self.fill.single_rows), 6),
            "padding_fraction_greedy": round(self.fill.padding(self.fill.greedy_rows), 6),
            "by_source": dict(sorted(self.by_source.items())),
            "by_lang": dict(sorted(self.by_lang.items())),
            "histograms": {
                "bin_tokens": HIST_BIN,
                "conversation_tokens": {str(k * HIST_BIN): v for k, v in sorted(self.conv_hist.items())},
                "row_tokens": {str(k * HIST_BIN): v for k, v in sorted(self.row_hist.items())},
            },
        }


def tokenizer_info(tokenizer) -> dict[str, Any]:
    """Name, vocabulary size (with added tokens) and fingerprint: what stats.json records."""
    from bloomchat.models import tokenizer_fingerprint

    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    if Path(name).is_dir():  # a local dir: absolute, so `pack-show` finds it from anywhere
        name = str(Path(name).resolve())
    return {
        "name": name,
        "vocab_size": len(tokenizer),
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
    }


def read_stats(out_dir: str | Path) -> dict[str, Any]:
    """The stats.json of a pack output dir; a clear error when it is not one."""
    path = Path(out_dir) / STATS_FILE
    if not Path(out_dir).is_dir():
        raise BloomchatError("packed data directory not found", where=str(out_dir))
    if not path.exists():
        raise BloomchatError("not a packed data directory (no stats.json; run `bloomchat pack` first, "
                             "or it was interrupted)", where=str(out_dir))
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BloomchatError(f"stats.json is not valid JSON ({e})", where=str(path)) from None
    if not isinstance(stats, dict) or not isinstance(stats.get("tokenizer"), dict):
        raise BloomchatError("stats.json has no 'tokenizer' object", where=str(path))
    return stats


def check_tokenizer_matches(out_dir: str | Path, tokenizer) -> dict[str, Any]:
    """Raise BloomchatError unless the shards in out_dir were made by this tokenizer; returns the stats.

    `tokenizer` is a tokenizer object, or a name/dir to load.
    """
    from bloomchat.models import load_tokenizer, tokenizer_fingerprint

    stats = read_stats(out_dir)
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    rec = stats["tokenizer"]
    fp = tokenizer_fingerprint(tokenizer)
    if rec.get("fingerprint") != fp:
        raise BloomchatError(
            f"shards were made by tokenizer {rec.get('name')!r} (vocab {rec.get('vocab_size')}, "
            f"fingerprint {rec.get('fingerprint')}), not by {getattr(tokenizer, 'name_or_path', '')!r} "
            f"(vocab {len(tokenizer)}, fingerprint {fp}); re-run `bloomchat pack` with the model's tokenizer",
            where=str(Path(out_dir) / STATS_FILE),
        )
    return stats
