"""Fixtures for the training tests (helpers live in train_helpers.py)."""

from __future__ import annotations

import pytest
from train_helpers import make_prepared


@pytest.fixture(scope="session")
def packed_pair(tmp_path_factory, tiny_tokenizer):
    """Two packed-shard dirs (stage 1 and stage 2 data) made by the real packer at 128 tokens."""
    from bloomchat.pack import pack

    root = tmp_path_factory.mktemp("packed")
    out = {}
    for name, n, src, dev in (("s1", 48, "oig", 0.0), ("s2", 32, "dolly", 0.1)):
        prep = make_prepared(root / f"{name}.jsonl", n, seed=len(name) + n, source=src)
        pack([prep], tiny_tokenizer, root / name, max_seq_length=128, packing="greedy", dev_ratio=dev,
             num_proc=1, seed=0, progress=False)
        out[name] = root / name
    return out

