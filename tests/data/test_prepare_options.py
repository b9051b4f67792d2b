"""prepare's options are declared once (bloomchat.data.options.PrepareOptions): the defaults,
the checks and the CLI flags all come from that declaration."""

from __future__ import annotations

import argparse
import json
import typing
from dataclasses import fields

import pytest

from bloomchat.data import DEFAULT_OPTIONS, PrepareOptions, prepare
from bloomchat.data.options import add_option_flags, check_options, options_from_args
from bloomchat.errors import BloomchatError

from test_prepare_rules import write_jsonl


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prepare")
    add_option_flags(p)
    return p


def _non_default_argv(f) -> list[str]:
    """A command line that sets field `f` to something other than its default."""
    flag, tp = f.metadata["flag"], typing.get_type_hints(PrepareOptions)[f.name]
    if tp is bool:
        return [flag]
    if typing.get_origin(tp) is typing.Literal:
        return [flag, next(a for a in typing.get_args(tp) if a != f.default)]
    if f.name in ("skip_sources", "keep_langs", "drop_langs", "lang_candidates"):
        return [flag, "en", "zh"]
    if f.name == "oasst1_trees":
        return [flag, "train.parquet"]
    return [flag, "7"]


def test_every_option_is_declared_once_with_a_doc():
    assert list(DEFAULT_OPTIONS) == [f.name for f in fields(PrepareOptions)]
    for f in fields(PrepareOptions):
        assert f.metadata["doc"] and "\n" not in f.metadata["doc"], f.name
        assert DEFAULT_OPTIONS[f.name] == f.default


def test_each_flag_reaches_its_option():
    p = _parser()
    help_text = p.format_help()
    assert options_from_args(p.parse_args([])) == {}  # a flag not given leaves the default to prepare
    for f in fields(PrepareOptions):
        if f.metadata["flag"] is None:
            continue
        assert f.metadata["flag"] in help_text
        got = options_from_args(p.parse_args(_non_default_argv(f)))
        assert list(got) == [f.name]
        assert check_options(got)[f.name] != f.default, f.name


def test_bool_flags_set_the_opposite_of_the_default():
    a = options_from_args(_parser().parse_args(["--no-filters", "--balance-langs", "--no-langid", "--allow-human-last"]))
    assert a == {"filters": False, "balance_langs": True, "detect_lang": False, "bot_last": False}


def test_checks_come_from_the_types():
    o = check_options({"keep_langs": "zh", "lang_candidates": ["all"], "max_turn_chars": 0, "skip_sources": ["x"]})
    assert (o["keep_langs"], o["lang_candidates"], o["max_turn_chars"], o["skip_sources"]) == (("zh",), "all", None, ("x",))
    for bad, msg in [({"shufle": False}, "did you mean 'shuffle'"),
                     ({"prosocial_check": "metadata"}, "prosocial_check must be one of meta_or_metadata, meta"),
                     ({"num_proc": 0}, "num_proc must be an integer >= 1"),
                     ({"basic_repeat": True}, "basic_repeat must be an integer >= 0"),
                     ({"filters": "no"}, "filters must be true or false"),
                     ({"max_per_lang": -1}, r"max_per_lang must be an integer >= 1, got -1 \(or null\)"),
                     ({"keep_langs": [1]}, "keep_langs must be a list of strings")]:
        with pytest.raises(BloomchatError, match=msg):
            check_options(bad)


def test_cli_skip_sources_flag(tmp_path):
    from bloomchat import cli

    rows = [{"text": f"<human>: Q{i}?\n<bot>: A{i}.", "metadata": {"source": s}} for i, s in enumerate(["a", "b", "prosocial"])]
    p = write_jsonl(tmp_path / "unified_x.jsonl", rows)
    out = tmp_path / "o.jsonl"
    assert cli.main(["prepare", "-q", "--oig", str(p), "--skip-sources", "a", "b", "--no-langid", "-o", str(out)]) == 0
    s = json.loads((tmp_path / "o.summary.json").read_text())
    assert s["files"][0]["filtered"] == {"a": 1, "b": 1} and s["options"]["skip_sources"] == ["a", "b"]
    # the API takes the same names and the same checks
    assert prepare(out=out, oig=[p], skip_sources=["prosocial"], detect_lang=False, progress=False)["conversations"] == 2
