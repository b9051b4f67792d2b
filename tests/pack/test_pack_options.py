"""pack's settings are declared once (bloomchat.pack.options.PackOptions): pack()'s defaults, the
`bloomchat pack` flags and a recipe stage's packing keys all come from that declaration."""

from __future__ import annotations

import inspect
import typing
from dataclasses import fields

import pytest

from bloomchat.errors import BloomchatError
from bloomchat.pack import pack
from bloomchat.pack.options import DEFAULT_OPTIONS, PackOptions
from bloomchat.train.recipe import StageData, recipe_keys

FIELDS = {f.name: f for f in fields(PackOptions)}
FLAGGED = [f for f in fields(PackOptions) if f.metadata["flag"] is not None]


def _pack_parser():
    from bloomchat.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    return sub.choices["pack"]


def _non_default_argv(f) -> list[str]:
    """A command line that sets field `f` to something other than its default."""
    tp = typing.get_type_hints(PackOptions)[f.name]
    if tp is bool:
        return [f.metadata["flag"]]
    if typing.get_origin(tp) is typing.Literal:
        return [f.metadata["flag"], next(a for a in typing.get_args(tp) if a != f.default)]
    return [f.metadata["flag"], "0.25" if tp is float else "7"]


def test_every_setting_is_declared_once_with_a_doc():
    assert list(DEFAULT_OPTIONS) == list(FIELDS)
    for f in FIELDS.values():
        assert f.metadata["doc"] and "\n" not in f.metadata["doc"], f.name
        assert DEFAULT_OPTIONS[f.name] == f.default


def test_cli_flag_defaults_are_the_declared_ones():
    p = _pack_parser()
    help_text = p.format_help()
    base = ["in.jsonl", "--tokenizer", "tok", "-o", "out"]
    args = vars(p.parse_args(base))
    for f in FLAGGED:
        assert f.metadata["flag"] in help_text, f.name
        assert args[f.name] == f.default, f"--{f.name}: flag default {args[f.name]!r} != {f.default!r}"
        got = vars(p.parse_args(base + _non_default_argv(f)))[f.name]
        assert got != f.default and PackOptions.check({f.name: got}), f.name


def test_pack_signature_defaults_are_the_declared_ones():
    named = {n: q.default for n, q in inspect.signature(pack).parameters.items()
             if q.kind is q.KEYWORD_ONLY}
    assert set(named) == {"max_seq_length", "packing", "dev_ratio", "num_proc", "seed", "overlong", "chat_format",
                          "loss_on"}
    for n, default in named.items():
        assert default == FIELDS[n].default, n


def test_recipe_stage_keys_share_default_doc_and_type():
    shared = set(recipe_keys(StageData)) & set(FIELDS)
    assert shared == {"max_seq_length", "packing", "dev_ratio", "num_proc", "loss_on", "overlong"}
    sd, hints, pack_hints = StageData(), typing.get_type_hints(StageData), typing.get_type_hints(PackOptions)
    for n in shared:
        assert getattr(sd, n) == FIELDS[n].default, n
        assert recipe_keys(StageData)[n].metadata["doc"] == FIELDS[n].metadata["doc"], n
        assert hints[n] == pack_hints[n], n


@pytest.mark.parametrize("options, message", [
    ({"max_seq_length": 1}, "max_seq_length must be an integer >= 2, not 1"),
    ({"packing": "zigzag"}, "unknown packing 'zigzag'; choose one of greedy, full, single, bfd"),
    ({"dev_ratio": 1.5}, r"dev_ratio must be in \[0, 1\), not 1.5"),
    ({"dev_ratio": "0.1"}, r"dev_ratio must be in \[0, 1\), not '0.1'"),
    ({"num_proc": 0}, "num_proc must be a positive integer, not 0"),
    ({"overlong": "truncate"}, "overlong must be one of split, drop, not 'truncate'"),
    ({"chat_format": "chatml"}, "chat_format must be one of bloomchat, base, not 'chatml'"),
    ({"loss_on": "all"}, "loss_on must be one of replies, conversation, not 'all'"),
    ({"window": 0}, "option window must be a positive integer, not 0"),
    ({"shard_rows": True}, "option shard_rows must be a positive integer, not True"),
    ({"seed": 1.5}, "seed must be an integer, not 1.5"),
    ({"progress": "no"}, "progress must be true or false, not 'no'"),
    ({"windw": 5}, "unknown pack option\\(s\\) windw \\(did you mean 'window'\\?\\)"),
])
def test_bad_values_name_the_setting(options, message):
    with pytest.raises(BloomchatError, match=f"^{message}"):
        PackOptions.check(options)


def test_check_fills_in_the_defaults():
    o = PackOptions.check({"packing": "bfd", "dev_ratio": 0})
    assert (o.packing, o.dev_ratio, o.window, o.max_seq_length) == ("bfd", 0, 10_000, 2048)
