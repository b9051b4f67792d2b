"""Preference pairs -> packed parquet rows, the packed-shards contract plus two columns.

Each pair is two conversations of one row: segment 2k-1 is prompt + chosen reply, segment 2k is
prompt + rejected reply, so the block-diagonal attention of SFT packing (`packing_attn`) keeps
them apart and each side is scored exactly as if it ran alone. `loss_mask` marks only the final
reply of each side (and its EOS): earlier bot turns of a multi-turn prompt are context.

    OUTDIR/{train,dev}/{split}-00000.parquet    input_ids, loss_mask, segment_ids,
                                                pair_id list<string>, pair_lang list<string>
    OUTDIR/stats.json                           kind "pairs", per split counts, tokenizer

The k-th entry of `pair_id` / `pair_lang` belongs to segments 2k-1 and 2k. Pairs are packed in
file order (`greedy`: as many whole pairs as fit a row; `single`: one pair a row); training
shuffles rows. A pair longer than max_seq_length is dropped and counted. The dev side of a
pair is decided by a digest of its prompt, so pairs sharing a prompt (OASST1's best reply
against each worse one) never straddle train and dev.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bloomchat.chat_tokens import encode_rendered, render
from bloomchat.data.pairs import Pair
from bloomchat.errors import BloomchatError
from bloomchat.pack.shards import ROW_GROUP_ROWS, SCHEMA, SPLITS, _list_array
from bloomchat.pack.stats import STATS_FILE, tokenizer_info

PAIR_SCHEMA = pa.schema([*SCHEMA, ("pair_id", pa.list_(pa.string())), ("pair_lang", pa.list_(pa.string()))])
PAIR_PACKINGS = ("greedy", "single")
_CHUNK = 256  # pairs tokenised per batched tokenizer call


@dataclass
class EncodedPair:
    ids: tuple[np.ndarray, np.ndarray]  # chosen, rejected: prompt + reply + EOS
    mask: tuple[np.ndarray, np.ndarray]
    id: str
    lang: str
    source: str
    dev_key: float  # in [0, 1): the pair is dev when below dev_ratio

    def __len__(self) -> int:
        return len(self.ids[0]) + len(self.ids[1])


def read_pairs(files: Sequence[Path]) -> Iterator[Pair]:
    """Prepared-pairs lines; a line that is not one is an error naming its file and line."""
    for path in files:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    p = Pair.from_record(json.loads(line))
                except (ValueError, json.JSONDecodeError) as e:
                    raise BloomchatError(f"not a prepared pair ({e}); make the file with bloomchat prepare-pairs",
                                         where=f"{path}:{n}") from None
                p.id = str(p.id) if p.id is not None else f"{Path(path).name}:{n}"
                yield p


def _dev_key(p: Pair) -> float:
    h = hashlib.blake2b(json.dumps([t.to_dict() for t in p.prompt], ensure_ascii=False).encode("utf-8",
                                                                                                "surrogatepass"),
                        digest_size=8)
    return int.from_bytes(h.digest(), "little") / 2.0 ** 64


def encode_pairs(pairs: list[Pair], tokenizer, *, chat_format: str = "bloomchat") -> list[EncodedPair]:
    """Both sides of each pair tokenised as whole conversations (chat_tokens); loss on the last reply."""
    items = []
    for p in pairs:
        for side in ("chosen", "rejected"):
            r = render(tokenizer, p.conversation(side), chat_format=chat_format)
            r.spans = r.spans[-1:]  # the compared reply only; earlier bot turns are prompt
            items.append(r)
    enc = encode_rendered(tokenizer, items)
    return [EncodedPair((enc[2 * i].ids, enc[2 * i + 1].ids), (enc[2 * i].mask, enc[2 * i + 1].mask), str(p.id),
                        p.lang or "und", p.source, _dev_key(p)) for i, p in enumerate(pairs)]


class _SplitWriter:
    """Rows of one split: packed greedily (or one pair a row), written a row group at a time."""

    def __init__(self, out: Path, split: str, max_len: int, single: bool):
        self.path = out / split / f"{split}-00000.parquet"
        self.max_len, self.single = max_len, single
        self.cur: list[EncodedPair] = []
        self.cur_len = 0
        self.buf: list[list[EncodedPair]] = []
        self.writer: pq.ParquetWriter | None = None
        self.counts = Counter()
        self.by_source: Counter = Counter()
        self.by_lang: Counter = Counter()

    def add(self, e: EncodedPair) -> None:
        if self.cur and (self.single or self.cur_len + len(e) > self.max_len):
            self._end_row()
        self.cur.append(e)
        self.cur_len += len(e)
        self.counts["pairs"] += 1
        self.by_source[e.source] += 1
        self.by_lang[e.lang] += 1

    def _end_row(self) -> None:
        self.buf.append(self.cur)
        self.cur, self.cur_len = [], 0
        if len(self.buf) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.buf:
            return
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.path, PAIR_SCHEMA, compression="zstd")
        cols = {k: [] for k in ("ids", "mask", "seg", "pid", "lang")}
        for row in self.buf:
            parts = [(x, m) for e in row for x, m in zip(e.ids, e.mask)]
            cols["ids"].append(np.concatenate([x for x, _ in parts]))
            cols["mask"].append(np.concatenate([m for _, m in parts]))
            cols["seg"].append(np.repeat(np.arange(1, len(parts) + 1, dtype=np.int16), [len(x) for x, _ in parts]))
            cols["pid"].append([e.id for e in row])
            cols["lang"].append([e.lang for e in row])
            self.counts["sequences"] += 1
            self.counts["tokens"] += len(cols["ids"][-1])
            self.counts["loss_tokens"] += int(cols["mask"][-1].sum())
        table = pa.Table.from_arrays(
            [_list_array(cols["ids"], np.int32), _list_array(cols["mask"], np.int8), _list_array(cols["seg"], np.int16),
             pa.array(cols["pid"], pa.list_(pa.string())), pa.array(cols["lang"], pa.list_(pa.string()))],
            schema=PAIR_SCHEMA)
        self.writer.write_table(table, row_group_size=len(self.buf))
        self.buf = []

    def close(self) -> dict:
        if self.cur:
            self._end_row()
        self._flush()
        if self.writer is not None:
            self.writer.close()
        c = self.counts
        return {"sequences": c["sequences"], "pairs": c["pairs"], "conversations": 2 * c["pairs"],
                "tokens": c["tokens"], "loss_tokens": c["loss_tokens"], "max_seq_length": self.max_len,
                "padding_fraction": round(1 - c["tokens"] / (c["sequences"] * self.max_len), 6)
                if c["sequences"] else 0.0, "by_source": dict(sorted(self.by_source.items())),
                "by_lang": dict(sorted(self.by_lang.items()))}


def pack_pairs(files: Sequence[str | Path], tokenizer, out_dir: str | Path, *, max_seq_length: int = 2048,
               packing: str = "greedy", dev_ratio: float = 0.0, chat_format: str = "bloomchat") -> dict:
    """Tokenise and pack prepared-pairs files into OUTDIR; returns stats.json's dict (see module doc)."""
    from bloomchat.pack.pipeline import _publish, _resolve_tokenizer, _work_dir

    if packing not in PAIR_PACKINGS:
        raise BloomchatError(f"pairs pack {' or '.join(PAIR_PACKINGS)}, not {packing!r}")
    if not 0.0 <= dev_ratio < 1.0:
        raise BloomchatError(f"dev_ratio must be in [0, 1), got {dev_ratio}")
    tok = _resolve_tokenizer(tokenizer, chat_format)
    files = [Path(f) for f in files]
    out = Path(out_dir)
    tmp = _work_dir(out)
    try:
        writers = {s: _SplitWriter(tmp, s, max_seq_length, packing == "single") for s in SPLITS}
        dropped = 0
        pending: list[Pair] = []
        for p in (*read_pairs(files), None):
            if p is not None:
                pending.append(p)
            if pending and (p is None or len(pending) >= _CHUNK):
                for e in encode_pairs(pending, tok, chat_format=chat_format):
                    if len(e) > max_seq_length:
                        dropped += 1
                        continue
                    writers["dev" if e.dev_key < dev_ratio else "train"].add(e)
                pending = []
        split = {s: w.close() for s, w in writers.items()}
        if not split["train"]["pairs"]:
            raise BloomchatError(f"no pair fits max_seq_length {max_seq_length} in the training split "
                                 f"({dropped} too long)", where=", ".join(map(str, files)))
        stats = {"kind": "pairs", "max_seq_length": max_seq_length, "packing": packing, "dev_ratio": dev_ratio,
                 "chat_format": chat_format, "dropped_overlong": dropped, "files": [str(f) for f in files],
                 "split": {s: v for s, v in split.items() if v["pairs"]}, "tokenizer": tokenizer_info(tok)}
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=1, ensure_ascii=False), encoding="utf-8")
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return stats
