"""prepare's options, declared once: each a typed field with a one-line doc, from which come
`DEFAULT_OPTIONS`, the checks of `prepare(**options)` (and so of a recipe's `prepare:` keys) and
the `bloomchat prepare` flags with their --help.

    from bloomchat.data.options import PrepareOptions
    PrepareOptions.check({"filters": False, "prosocial_check": "meta"})   # -> every option, checked

A field's metadata: `doc` (one line, the --help of its flag, so a bool's doc says what the flag
does), `flag` (its command-line spelling; a bool's flag sets the opposite of its default; None:
no flag), `group` (its --help section), `metavar`, and `min` for integers. Adding an option is
adding a field here; `prepare` then reads it from its options dict.
"""

from __future__ import annotations

import argparse
import difflib
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Optional, Union

from bloomchat.data.filters import FilterConfig
from bloomchat.data.readers import OIG_BASIC_COPIES, OIG_SKIP_SOURCES, PROSOCIAL_CHECKS
from bloomchat.errors import BloomchatError

_FILTERS = "filters (all on by default; each counted by reason in the summary)"
_LANGS = "languages"


def _opt(default: Any, doc: str, flag: str | None, group: str | None = None, **meta: Any) -> Any:
    return field(default=default, metadata={"doc": doc, "flag": flag, "group": group, **meta})


@dataclass(frozen=True)
class PrepareOptions:
    """Every option of `prepare`, with its default."""

    filters: bool = _opt(True, "every filter off: exactly BLOOMChat's texts", "--no-filters", _FILTERS)
    dedup: bool = _opt(True, "keep exact duplicate conversations", "--no-dedup", _FILTERS)
    empty_turns: bool = _opt(True, "keep conversations with an empty or whitespace-only turn",
                             "--keep-empty-turns", _FILTERS)
    max_turn_chars: Optional[int] = _opt(
        FilterConfig().max_turn_chars, f"drop conversations with a longer turn (default {FilterConfig().max_turn_chars}; "
        "0 = no limit)", "--max-turn-chars", _FILTERS, metavar="N", min=0)
    alternation: bool = _opt(True, "keep conversations whose turns do not alternate human/bot from a human turn",
                             "--allow-non-alternating", _FILTERS)
    bot_last: bool = _opt(True, "keep conversations that do not end with a bot turn", "--allow-human-last", _FILTERS)
    normalize_tags: bool = _opt(False, "OIG: write 'Rosey:' bot tags as '<bot>:' in the completion text",
                                "--normalize-tags")
    skip_sources: tuple[str, ...] = _opt(OIG_SKIP_SOURCES, "OIG: leave out items whose metadata source is one of "
                                         f"these (default: {' '.join(OIG_SKIP_SOURCES)})", "--skip-sources",
                                         metavar="SOURCE")
    prosocial_check: Literal[PROSOCIAL_CHECKS] = _opt(
        "meta_or_metadata", "OIG: field whose source is tested against skip_sources: 'meta_or_metadata' (default) "
        "or only 'meta' as BLOOMChat's script (which skips nothing on OIG's files, which use 'metadata')",
        "--prosocial-check")
    oasst1_trees: Optional[str] = _opt(
        None, "OASST1: keep only the trees of one split, listed by this file (HF oasst1 data/train-*.parquet, "
        "any file with message_tree_id, or a .txt of tree ids)", "--oasst1-trees", metavar="FILE")
    basic_repeat: int = _opt(OIG_BASIC_COPIES - 1, "OIG unified_basic: extra copies of each item (default 1000, "
                             "i.e. 1001 in all)", "--basic-repeat", metavar="N", min=0)
    detect_lang: bool = _opt(True, "do not detect languages (lang stays null unless the data has one)",
                             "--no-langid", _LANGS)
    lang_candidates: Union[Literal["all", "default"], tuple[str, ...], None] = _opt(
        None, "languages the detector may answer ('all': its 140; default: 93 common ones, see "
        "bloomchat.data.langid)", "--lang-candidates", _LANGS, metavar="CODE")
    keep_langs: Optional[tuple[str, ...]] = _opt(None, "keep only these languages", "--keep-lang", _LANGS,
                                                 metavar="CODE")
    drop_langs: Optional[tuple[str, ...]] = _opt(None, "drop these languages", "--drop-lang", _LANGS, metavar="CODE")
    max_per_lang: Optional[int] = _opt(None, "at most N conversations per language (random, seeded)",
                                       "--max-per-lang", _LANGS, metavar="N", min=1)
    balance_langs: bool = _opt(False, "cap every language at the count of the smallest one", "--balance-langs",
                               _LANGS)
    shuffle: bool = _opt(True, "keep input order (default: shuffle everything with the seed, as BLOOMChat did)",
                         "--no-shuffle")
    num_proc: int = _opt(1, "processes for language detection, the slow step (~4,800 Dolly conversations/s each; "
                         "default 1)", "--num-proc", metavar="N", min=1)
    progress: bool = _opt(True, "progress bars (the CLI's -q turns them off)", None)

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Every option (defaults filled in), each checked against its declared type; a
        BloomchatError naming the option otherwise (with a hint for a misspelt name)."""
        names = [f.name for f in fields(cls)]
        for k in options:
            if k not in names:
                hint = difflib.get_close_matches(k, names, n=1)
                raise BloomchatError(f"unknown prepare option {k!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                     + f"; known: {', '.join(names)}")
        hints = typing.get_type_hints(cls)
        out = {}
        for f in fields(cls):
            v = options.get(f.name, f.default)
            out[f.name] = _coerce(f.name, v, hints[f.name], f.metadata)
        return asdict(cls(**out))


def _coerce(name: str, v: Any, tp: Any, meta: Any) -> Any:
    """`v` as type `tp`: lists become tuples, a lone string a one-element tuple, paths strings;
    an integer option with `min` 0 reads 0 as "no limit" (None) when None is allowed."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin is Union:
        if v is None and type(None) in args:
            return None
        alts = [a for a in args if a is not type(None)]
        for a in alts:
            try:
                return _coerce(name, v, a, meta)
            except BloomchatError as e:
                last = e
        if len(alts) == 1:  # Optional[X]: X's own message says more (e.g. the minimum)
            raise BloomchatError(f"{last} (or null)") from None
        raise BloomchatError(f"{name} must be {_describe(tp)}, got {v!r}")
    if origin is Literal:
        if v in args:
            return v
        raise BloomchatError(f"{name} must be one of {', '.join(map(str, args))}, got {v!r}")
    if tp is bool:
        if isinstance(v, bool):
            return v
        raise BloomchatError(f"{name} must be true or false, got {v!r}")
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int) or v < meta.get("min", v):
            raise BloomchatError(f"{name} must be an integer >= {meta.get('min', 0)}, got {v!r}")
        return v
    if tp is str:
        if isinstance(v, (str, os.PathLike)):
            return str(v)
        raise BloomchatError(f"{name} must be a string, got {v!r}")
    if origin is tuple:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
            return tuple(v)
        raise BloomchatError(f"{name} must be a list of strings, got {v!r}")
    raise TypeError(f"no rule for {tp!r}")  # pragma: no cover - a new field type needs one


def _describe(tp: Any) -> str:
    parts = []
    for a in typing.get_args(tp):
        if a is type(None):
            parts.append("null")
        elif typing.get_origin(a) is Literal:
            parts += [repr(x) for x in typing.get_args(a)]
        elif typing.get_origin(a) is tuple:
            parts.append("a list of strings")
        else:
            parts.append(getattr(a, "__name__", str(a)))
    return " or ".join(parts)


def _normalise(options: dict[str, Any]) -> dict[str, Any]:
    """The spellings a user may use for some values: max_turn_chars 0 = no limit, lang_candidates
    ['all'] = 'all'."""
    o = dict(options)
    if o.get("max_turn_chars") == 0:
        o["max_turn_chars"] = None
    lc = o.get("lang_candidates")
    if isinstance(lc, (list, tuple)) and len(lc) == 1 and lc[0] in ("all", "default"):
        o["lang_candidates"] = lc[0]
    return o


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """PrepareOptions.check after the user spellings above."""
    return PrepareOptions.check(_normalise(options))


#: Every option with its default (train/recipe.py checks a recipe's `prepare:` keys against it).
DEFAULT_OPTIONS: dict[str, Any] = asdict(PrepareOptions())


# ------------------------------------------------------------------------------- command line


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per option that has one, help from its doc; every default None (= not given)."""
    groups: dict[str | None, Any] = {None: parser}
    hints = typing.get_type_hints(PrepareOptions)
    for f in fields(PrepareOptions):
        meta = f.metadata
        if meta["flag"] is None:
            continue
        group = meta["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": meta["doc"]}
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is Union else [tp]
        if tp is bool:
            kw["action"] = "store_false" if f.default else "store_true"
        elif typing.get_origin(tp) is Literal:
            kw["choices"] = typing.get_args(tp)
        elif any(typing.get_origin(a) is tuple for a in inner):
            kw.update(nargs="+", metavar=meta.get("metavar"))
        elif int in inner:
            kw.update(type=int, metavar=meta.get("metavar"))
        else:
            kw.update(type=str, metavar=meta.get("metavar"))
        groups[group].add_argument(meta["flag"], **kw)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (flags left out are not in the dict)."""
    return {f.name: getattr(args, f.name) for f in fields(PrepareOptions)
            if f.metadata["flag"] is not None and getattr(args, f.name, None) is not None}


__all__ = ["DEFAULT_OPTIONS", "PrepareOptions", "add_option_flags", "check_options", "options_from_args"]
