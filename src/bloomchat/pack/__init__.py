"""Tokenisation and packing: prepared JSONL -> loss-masked, packed parquet shards for training.

    bloomchat pack prepared.jsonl --tokenizer TOKENIZER -o packed/ [--packing bfd]

    from bloomchat.pack import pack, read_stats, check_tokenizer_matches, iter_rows, load_packed
    from bloomchat.pack import hf_labels      # labels that never cross a conversation boundary
"""

from bloomchat.pack.labels import cu_seqlens, hf_labels, position_ids
from bloomchat.pack.packers import PACKINGS
from bloomchat.pack.pipeline import pack
from bloomchat.pack.shards import iter_rows, load_packed, shard_files
from bloomchat.pack.stats import check_tokenizer_matches, read_stats

__all__ = [
    "PACKINGS",
    "check_tokenizer_matches",
    "cu_seqlens",
    "hf_labels",
    "iter_rows",
    "load_packed",
    "pack",
    "position_ids",
    "read_stats",
    "shard_files",
]
