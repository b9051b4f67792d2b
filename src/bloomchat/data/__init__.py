"""Data preparation: raw OIG / Dolly / OASST1 / users' files -> prepared JSONL.

    bloomchat prepare --dolly databricks-dolly-15k.jsonl -o dolly.jsonl
    bloomchat data-report dolly.jsonl -o report/
"""

from bloomchat.data.options import DEFAULT_OPTIONS, PrepareOptions
from bloomchat.data.prepare import prepare, rejects_path, summary_path
from bloomchat.data.readers import (
    OIG_BASIC_COPIES,
    OIG_PER_SOURCE,
    iter_dolly,
    iter_oasst1,
    iter_oig,
    iter_user_jsonl,
    read_dolly,
    read_oasst1,
    read_oig,
    read_user_jsonl,
)

__all__ = [
    "DEFAULT_OPTIONS",
    "OIG_BASIC_COPIES",
    "OIG_PER_SOURCE",
    "PrepareOptions",
    "iter_dolly",
    "iter_oasst1",
    "iter_oig",
    "iter_user_jsonl",
    "prepare",
    "read_dolly",
    "read_oasst1",
    "read_oig",
    "read_user_jsonl",
    "rejects_path",
    "summary_path",
]
