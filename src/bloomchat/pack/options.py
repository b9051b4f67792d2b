"""pack's settings, declared once: each a typed field with a one-line doc, from which come the
defaults and checks of `pack()`, the `bloomchat pack` flags with their --help, and the defaults
and docs of a recipe stage's packing keys (train.recipe.StageData, via `pack_setting`).

    from bloomchat.pack.options import PackOptions
    PackOptions.check({"packing": "bfd"}).window   # -> 10000, every setting checked

A field's metadata: `doc` (one line, the --help of its flag; a bool's doc says what its flag does),
`flag` (command-line spelling; a bool's flag sets the opposite of its default; None: no flag), `min`
and `below` (range of a number), `msg` (the error for a bad value, when not the generic one).
"""

from __future__ import annotations

import argparse
import difflib
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from bloomchat.chat_tokens import CHAT_FORMATS, LOSS_ON
from bloomchat.errors import BloomchatError
from bloomchat.pack.packers import PACKINGS
from bloomchat.pack.shards import ROW_GROUP_ROWS, SHARD_ROWS

OVERLONG = ("split", "drop")
Packing = Literal[PACKINGS]
Overlong = Literal[OVERLONG]
ChatFormat = Literal[CHAT_FORMATS]
LossOn = Literal[LOSS_ON]

_POSITIVE_OPTION = "option {name} must be a positive integer, not {v!r}"


def _opt(default: Any, doc: str, flag: str | None, **meta: Any) -> Any:
    return field(default=default, metadata={"doc": doc, "flag": flag, **meta})


@dataclass(frozen=True)
class PackOptions:
    """Every setting of `pack`, with its default."""

    max_seq_length: int = _opt(2048, "tokens per packed row (BLOOMChat: 2048)", "--max-seq-length", min=2)
    packing: Packing = _opt("greedy", "greedy (BLOOMChat), full, single, or bfd (best-fit decreasing, least "
                            "padding)", "--packing", msg="unknown packing {v!r}; choose one of {choices}")
    dev_ratio: float = _opt(0.0, "share of conversations held out as dev", "--dev-ratio", min=0.0, below=1.0)
    num_proc: int = _opt(1, "tokenizer processes (output is the same for any)", "--num-proc", min=1)
    seed: int = _opt(0, "seed of the dev split and of bfd's shuffle", "--seed")
    overlong: Overlong = _opt(
        "split", "conversations longer than max_seq_length: split into pieces (later pieces train a reply without "
        "its prompt), or drop them as BLOOMChat's packing did (counted)", "--overlong")
    chat_format: ChatFormat = _opt(
        "bloomchat", "bloomchat: BLOOMChat's '<human>: ... <bot>: ...' text (default); base: the tokenizer's own "
        "chat template (e.g. SmolLM2's ChatML), loss on its assistant turns", "--chat-format")
    loss_on: LossOn = _opt(
        "replies", "replies: loss on each bot reply and its EOS (default); conversation: every token, one EOS at "
        "the end, the verbatim text (BLOOMChat's scripts as they ran)", "--loss-on")
    # bfd: conversations sorted together; 10,000 x ~176 tokens (Dolly+OASST1 mean) = 1.8M tokens
    # = ~9 MB of int32 ids + int8 masks held at once
    window: int = _opt(10_000, "bfd: conversations sorted and packed together", "--window", min=1,
                       msg=_POSITIVE_OPTION)
    # 1,000 x ~1.7 kB (Dolly line) = ~1.7 MB per tokenisation task
    chunk_lines: int = _opt(1_000, "lines per tokenisation task", None, min=1, msg=_POSITIVE_OPTION)
    shard_rows: int = _opt(SHARD_ROWS, "rows per shard file", "--shard-rows", min=1, msg=_POSITIVE_OPTION)
    row_group_rows: int = _opt(ROW_GROUP_ROWS, "rows per parquet row group", None, min=1, msg=_POSITIVE_OPTION)
    skip_invalid: bool = _opt(False, "count and skip lines that are not prepared records instead of failing",
                              "--skip-invalid")
    progress: bool = _opt(True, "no progress bar", "--no-progress")
    plot: bool = _opt(True, "write OUTDIR/lengths.png, a chart of the lengths", None)

    @classmethod
    def check(cls, options: dict[str, Any]) -> PackOptions:
        """Every setting (defaults filled in), each checked against its declared type and range; a
        BloomchatError naming the setting otherwise (with a hint for a misspelt name)."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            hint = difflib.get_close_matches(unknown[0], names, n=1)
            raise BloomchatError(f"unknown pack option(s) {', '.join(unknown)}"
                                 + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; known: {', '.join(names)}")
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name in options:
                _check_value(f.name, options[f.name], hints[f.name], f.metadata)
        return cls(**options)


def _check_value(name: str, v: Any, tp: Any, meta: Any) -> None:
    """A BloomchatError when `v` is not a value of type `tp` within the field's range."""
    msg = meta.get("msg")
    if typing.get_origin(tp) is Literal:
        ok, msg = v in typing.get_args(tp), msg or "{name} must be one of {choices}, not {v!r}"
    elif tp is bool:
        ok, msg = isinstance(v, bool), msg or "{name} must be true or false, not {v!r}"
    elif tp is int:
        lo = meta.get("min")
        ok = isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)
        msg = msg or ("{name} must be an integer, not {v!r}" if lo is None else
                      "{name} must be a positive integer, not {v!r}" if lo == 1 else
                      "{name} must be an integer >= {lo}, not {v!r}")
    elif tp is float:
        lo, hi = meta.get("min", float("-inf")), meta.get("below", float("inf"))
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v < hi
        msg = msg or "{name} must be in [{lo:g}, {hi:g}), not {v!r}"
    else:  # pragma: no cover - a new field type needs a rule
        raise TypeError(f"no rule for {tp!r}")
    if not ok:
        choices = ", ".join(typing.get_args(tp)) if typing.get_origin(tp) is Literal else ""
        raise BloomchatError(msg.format(name=name, v=v, choices=choices, lo=meta.get("min"), hi=meta.get("below")))


#: Every setting with its default.
DEFAULT_OPTIONS: dict[str, Any] = asdict(PackOptions())


def pack_setting(name: str) -> tuple[str, Any]:
    """(doc, default) of one setting: what a recipe's key of the same name shares with pack."""
    f = {f.name: f for f in fields(PackOptions)}[name]
    return f.metadata["doc"], f.default


# ------------------------------------------------------------------------------- command line


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting that has one, help from its doc, default from its declaration."""
    hints = typing.get_type_hints(PackOptions)
    for f in fields(PackOptions):
        flag = f.metadata["flag"]
        if flag is None:
            continue
        tp = hints[f.name]
        kw: dict[str, Any] = {"dest": f.name, "default": f.default, "help": f.metadata["doc"]}
        if tp is bool:
            kw["action"] = "store_false" if f.default else "store_true"
        elif typing.get_origin(tp) is Literal:
            kw["choices"] = typing.get_args(tp)
        else:
            kw["type"] = tp
        parser.add_argument(flag, **kw)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that have a flag, as parsed (a flag not given: its default)."""
    return {f.name: getattr(args, f.name) for f in fields(PackOptions) if f.metadata["flag"] is not None}


__all__ = ["DEFAULT_OPTIONS", "OVERLONG", "PackOptions", "add_option_flags", "options_from_args", "pack_setting"]
