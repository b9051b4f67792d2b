"""Pack the real Dolly-15k + OASST1 data at 2048: masks decode to the replies, bfd pads < 2%."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from bloomchat.chat_format import render_text
from bloomchat.data import prepare
from bloomchat.pack import iter_rows, pack

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def real_prepared(shared_data, tmp_path_factory):
    dolly = shared_data("dolly15k", "databricks-dolly-15k.from-docx.jsonl")
    oasst = shared_data("oasst1", "oasst1_validation_en.messages.jsonl")
    out = tmp_path_factory.mktemp("real") / "dolly_oasst1.jsonl"
    prepare(out=out, dolly=[dolly], oasst1=[oasst], progress=False)
    return out


@pytest.fixture(scope="module")
def real_tokenizer(real_prepared):
    """Byte-level BPE trained on 3,000 of the conversations (BLOOM's 250k tokenizer is not downloadable here)."""
    from bloomchat.models import train_bpe_tokenizer

    with open(real_prepared, encoding="utf-8") as f:
        texts = [json.loads(line)["completion"] for line in itertools.islice(f, 3000)]
    return train_bpe_tokenizer(texts, vocab_size=8000)


def test_real_dolly_oasst1_masks_and_fill(real_prepared, real_tokenizer, tmp_path):
    out = tmp_path / "packed"
    stats = pack(real_prepared, real_tokenizer, out, max_seq_length=2048, packing="bfd", dev_ratio=0.01,
                 progress=False, plot=False)
    by_text = {}
    n_records = 0
    with open(real_prepared, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            n_records += 1
            by_text[render_text(rec["turns"])] = [t["text"] for t in rec["turns"] if t["role"] == "bot"]
    assert stats["records_read"] == n_records
    assert stats["conversations"] + stats["dropped"] == n_records
    assert set(stats["split"]["train"]["by_source"]) == {"dolly", "oasst1"}
    tr = stats["split"]["train"]
    assert tr["padding_fraction"] < 0.02 < tr["padding_fraction_greedy"] < tr["padding_fraction_single"]
    assert stats["split"]["dev"]["conversations"] > 50

    eos = real_tokenizer.eos_token_id
    rows = list(iter_rows(out, "train"))
    assert sum(len(r["input_ids"]) for r in rows) == tr["tokens"]
    assert sum(int(r["loss_mask"].sum()) for r in rows) == tr["loss_tokens"]
    checked = 0
    for r in random.Random(0).sample(rows, 60):
        for k in range(1, int(r["segment_ids"].max()) + 1):
            ids, mask = r["input_ids"][r["segment_ids"] == k], r["loss_mask"][r["segment_ids"] == k]
            text = real_tokenizer.decode(ids[ids != eos].tolist())
            if text not in by_text:  # a piece of one of the few split overlong conversations
                assert stats["overlong"]["conversations"] > 0
                continue
            edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
            spans = zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))
            got = []
            for s, e in spans:
                assert ids[e - 1] == eos
                got.append(real_tokenizer.decode(ids[s:e - 1].tolist()))
            assert got == [" " + reply for reply in by_text[text]]
            checked += 1
    assert checked > 300
