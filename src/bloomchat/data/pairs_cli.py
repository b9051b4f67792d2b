"""`bloomchat prepare-pairs`: preference data -> a prepared-pairs JSONL for a `kind: dpo` stage.

    bloomchat prepare-pairs --oasst1 oasst1.messages.jsonl -o pairs.jsonl              # crowd rankings
    bloomchat prepare-pairs --jsonl oaast_rm_zh.json trl_pairs.jsonl -o mine.jsonl     # ranked / TRL layouts
    bloomchat prepare-pairs --oasst1 oasst1.messages.jsonl --pairing best_vs_worst --keep-lang es fr -o p.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bloomchat.data.filters import MAX_TURN_CHARS


def add_parser(subparsers) -> None:
    from bloomchat.data.pair_readers import PAIR_LAYOUTS, PAIRINGS

    p = subparsers.add_parser(
        "prepare-pairs",
        help="OASST1 rankings / own preference files -> prepared pairs JSONL (for a kind: dpo stage)",
        description="Turn preference data into one prepared-pairs JSONL ({prompt turns, chosen, rejected, lang, "
        "source, id}), a summary JSON and a rejects JSONL next to it; lines read = kept + filtered + rejected.")
    src = p.add_argument_group("inputs (.jsonl, .jsonl.gz, .json, .parquet)")
    src.add_argument("--oasst1", nargs="+", type=Path, default=[], metavar="FILE",
                     help="OASST1 message-level export: sibling replies ranked by the crowd")
    src.add_argument("--jsonl", nargs="+", type=Path, default=[], metavar="FILE", help=f"own pairs: {PAIR_LAYOUTS}")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUT.jsonl", help="prepared pairs file")
    p.add_argument("--rejects", type=Path, help="rejected lines (default OUT-stem.rejects.jsonl)")
    p.add_argument("--pairing", choices=PAIRINGS, default="best_vs_rest",
                   help="OASST1: the best reply against each worse sibling (default) or only the worst")
    p.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep exact duplicate pairs")
    p.add_argument("--max-turn-chars", type=int, default=MAX_TURN_CHARS, metavar="N",
                   help=f"drop pairs with a longer turn or reply (default {MAX_TURN_CHARS}; 0 = no limit)")
    p.add_argument("--no-langid", dest="detect_lang", action="store_false",
                   help="do not detect languages (lang stays null unless the data has one)")
    p.add_argument("--keep-lang", dest="keep_langs", nargs="+", metavar="CODE", help="keep only these languages")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_prepare_pairs)


def run_prepare_pairs(args: argparse.Namespace) -> int:
    from bloomchat.data.cli import _top
    from bloomchat.data.prepare_pairs import prepare_pairs
    from bloomchat.errors import BloomchatError

    if args.max_turn_chars < 0:
        raise BloomchatError("must be >= 0", where="--max-turn-chars")
    if not args.oasst1 and not args.jsonl:
        raise BloomchatError("no input: give --oasst1 and/or --jsonl")
    s = prepare_pairs(out=args.out, oasst1=args.oasst1, jsonl=args.jsonl, pairing=args.pairing,
                      rejects=args.rejects, dedup=args.dedup, max_turn_chars=args.max_turn_chars or None,
                      detect_lang=args.detect_lang, keep_langs=args.keep_langs, progress=not args.quiet)
    ok = "balanced" if s["balanced"] else "NOT BALANCED (a bug: please report)"
    print(f"wrote {s['pairs']} pairs to {s['out']}\n"
          f"  languages: {_top(s['by_lang'])}; sources: {_top(s['by_source'])}\n"
          f"  filtered pairs: {_top(s['filtered_pairs']) or 'none'}; rejected lines: {s['rejects_written']} -> "
          f"{s['rejects']}\n"
          f"  accounting (lines read = kept + filtered + rejected, per file): {ok}; summary: {s['summary']}")
    return 0 if s["balanced"] else 1
