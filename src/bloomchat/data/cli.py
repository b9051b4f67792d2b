"""`bloomchat prepare` and `bloomchat data-report`.

    bloomchat prepare --oig unified_chip2.jsonl unified_basic.jsonl -o stage1.jsonl          # BLOOMChat stage 1
    bloomchat prepare --oasst1 oasst1.messages.jsonl --dolly databricks-dolly-15k.jsonl -o stage2.jsonl
    bloomchat prepare --jsonl chats.jsonl sharegpt.json --keep-lang zh en --balance-langs -o mine.jsonl
    bloomchat prepare --recipe recipes/bloomchat-176b.yaml --stage stage2-oasst1-dolly \
        --set oasst1=oasst1.messages.jsonl --set dolly=dolly.jsonl -o stage2.jsonl          # a recipe stage's sources
    bloomchat prepare --dolly dolly.jsonl --no-filters -o exact.jsonl                         # BLOOMChat-exact texts
    bloomchat data-report stage2.jsonl -o stage2-report/
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from bloomchat.data.options import add_option_flags, options_from_args
from bloomchat.errors import BloomchatError


def add_parser(subparsers, resolve_recipe: Callable[[Path, str | None, dict], dict] | None = None) -> None:
    """The `prepare` and `data-report` verbs. `resolve_recipe(recipe, stage, vars)` -> prepare's
    keyword arguments for `--recipe`; it comes from above (bloomchat.prepare_cli) because recipes
    are read by the train stage, which imports data, never the other way round."""
    p = subparsers.add_parser(
        "prepare",
        help="raw OIG / Dolly / OASST1 / own data -> prepared training JSONL (BLOOMChat rules)",
        description="Turn raw conversation data into one prepared JSONL (BLOOMChat {prompt, completion} plus "
        "turns, source, lang, id), a summary JSON and a rejects JSONL next to it.",
    )
    src = p.add_argument_group("inputs (.jsonl, .jsonl.gz, .json, .parquet)")
    src.add_argument("--oig", nargs="+", type=Path, default=[], metavar="FILE", help="OIG unified_*.jsonl[.gz] files")
    src.add_argument("--dolly", nargs="+", type=Path, default=[], metavar="FILE", help="Dolly-15k file(s)")
    src.add_argument("--oasst1", nargs="+", type=Path, default=[], metavar="FILE",
                     help="OASST1 message-level or tree export")
    src.add_argument("--jsonl", nargs="+", type=Path, default=[], metavar="FILE",
                     help="own data: OpenAI messages, ShareGPT conversations, prompt/completion, Alpaca, text")
    src.add_argument("--recipe", type=Path, help="take the sources, per-source and options from a recipe stage")
    src.add_argument("--stage", help="the recipe stage (default: the first one with raw sources)")
    src.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="fill a ${NAME} placeholder of the recipe (as in bloomchat train)")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUT.jsonl", help="prepared output file")
    p.add_argument("--rejects", type=Path, help="rejected lines (default OUT-stem.rejects.jsonl)")
    p.add_argument("--seed", type=int, default=None, help="shuffle / sampling seed (default 42 or the recipe's)")
    p.add_argument("--per-source", type=int, default=None, metavar="N",
                   help="OIG: first N items of each file, skipped ones included (default 100000)")
    add_option_flags(p)  # one flag per prepare option, from bloomchat.data.options.PrepareOptions
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_prepare, resolve_recipe=resolve_recipe)

    r = subparsers.add_parser(
        "data-report",
        help="charts + JSON about a prepared file: sources, languages, lengths, turns, filters",
        description="Read a prepared JSONL (and its summary JSON when next to it) and write report.json, "
        "PNG charts and report.html.",
    )
    r.add_argument("file", type=Path, metavar="FILE", help="prepared JSONL")
    r.add_argument("-o", "--out", type=Path, default=None, metavar="DIR", help="output folder (default FILE-stem.report/)")
    r.add_argument("--tokenizer", action="append", default=[], metavar="NAME_OR_DIR",
                   help="tokens per word (per character in zh/ja/th...) of each language under this tokenizer; "
                   "repeat to compare tokenizers on the same texts")
    r.add_argument("--fertility-sample", type=int, default=2000, metavar="N",
                   help="conversations per language the fertility is measured on (default 2000)")
    r.set_defaults(func=run_report)


def _set_vars(items: list[str]) -> dict[str, str]:
    vars_ = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise BloomchatError(f"--set expects NAME=VALUE, got {item!r}")
        vars_[name.strip()] = value
    return vars_


def run_prepare(args: argparse.Namespace) -> int:
    from bloomchat.data.prepare import prepare

    kw: dict = {}
    if args.recipe is not None:
        if args.resolve_recipe is None:
            raise BloomchatError("--recipe is read by `bloomchat prepare` (bloomchat.prepare_cli), not by this parser")
        kw = args.resolve_recipe(args.recipe, args.stage, _set_vars(args.set))
    elif args.stage is not None or args.set:
        raise BloomchatError("--stage and --set need --recipe")
    for k in ("oig", "dolly", "oasst1", "jsonl"):
        if getattr(args, k):
            kw[k] = list(kw.get(k, [])) + getattr(args, k)
    for k in ("seed", "per_source"):
        if getattr(args, k) is not None:
            kw[k] = getattr(args, k)
    kw.update(options_from_args(args))
    kw["progress"] = not args.quiet
    s = prepare(out=args.out, rejects=args.rejects, **kw)
    ok = "balanced" if s["balanced"] else "NOT BALANCED (a bug: please report)"
    print(
        f"wrote {s['conversations']} conversations ({s['unique_conversations']} unique) to {s['out']}\n"
        f"  languages: {_top(s['by_lang'])}\n"
        f"  filtered: {_top(s['filtered_conversations']) or 'none'}; rejected lines: {s['rejects_written']} -> {s['rejects']}\n"
        f"  accounting (lines read = kept + filtered + rejected, per file): {ok}; summary: {s['summary']}"
    )
    return 0 if s["balanced"] else 1


def _top(counts: dict, n: int = 8) -> str:
    items = list(counts.items())
    txt = ", ".join(f"{k} {v}" for k, v in items[:n])
    return txt + (f", +{len(items) - n} more" if len(items) > n else "")


def run_report(args: argparse.Namespace) -> int:
    from bloomchat.data.report import data_report

    from bloomchat.models import load_tokenizer

    if args.fertility_sample < 1:
        raise BloomchatError("must be at least 1", where="--fertility-sample")
    tokenizers = [(name, load_tokenizer(name)) for name in args.tokenizer]
    rep = data_report(args.file, args.out, tokenizers=tokenizers, fertility_sample=args.fertility_sample)
    print(f"wrote {rep['html']} ({len(rep['charts'])} charts, {rep['json']})")
    return 0
