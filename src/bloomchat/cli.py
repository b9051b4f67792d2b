"""`bloomchat <verb>`: a thin command line over importable functions.

    bloomchat demo                      # the whole pipeline on a laptop, tiny model
    bloomchat --help                    # the verbs that exist

Each verb lives in the module of its pipeline stage, which exposes
`add_parser(subparsers)`; the parser's `func(args) -> int` does the work. Errors the user can
fix (BloomchatError) print as one line and exit 2; there is no traceback unless BLOOMCHAT_DEBUG=1.
"""

from __future__ import annotations

import argparse
import importlib

from bloomchat import __version__
from bloomchat.errors import run_verb  # also reached as bloomchat.cli.run_verb until train/cli.py imports it from errors

#: Modules that define verbs, in pipeline order. A verb appears here only once it works.
VERB_MODULES: list[str] = [
    "bloomchat.demo.cli",
    "bloomchat.models.cli",
    "bloomchat.prepare_cli",  # the data stage's verbs, with `prepare --recipe` resolved above data and train
    "bloomchat.data.pairs_cli",  # prepare-pairs: preference pairs for a kind: dpo stage
    "bloomchat.pack.cli",
    "bloomchat.train.cli",
    "bloomchat.infer.cli",
    "bloomchat.eval.cli",
    "bloomchat.arena.cli",
    "bloomchat.export.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bloomchat",
        description="Turn an open multilingual base model into a multilingual chat model, "
        "serve it, and measure it per language (BLOOMChat recipe).",
    )
    parser.add_argument("--version", action="version", version=f"bloomchat {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for mod in dict.fromkeys(VERB_MODULES):  # each module once, in order
        importlib.import_module(mod).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.verb is None else 2
    return run_verb(args)


if __name__ == "__main__":
    raise SystemExit(main())
