"""`bloomchat demo [--workdir DIR] [--fresh]`: see bloomchat.demo.run."""

from __future__ import annotations

import argparse

from bloomchat.models.presets import SIZE_PRESETS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on this laptop: demo data, tiny BLOOM, two training stages, chat",
        description="Write the bundled multilingual demo data, train a tokenizer and a tiny BLOOM, run both "
        "stages of recipes/demo.yaml, save WORKDIR/model in Hugging Face layout and chat with it. "
        "A second run reuses what is already built.",
    )
    p.add_argument("--workdir", default="bloomchat-demo", help="where everything is written (default: ./bloomchat-demo)")
    p.add_argument("--fresh", action="store_true", help="delete WORKDIR first and rebuild everything")
    p.add_argument("--preset", default="tiny", choices=sorted(SIZE_PRESETS), help="base model size (default: tiny)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from bloomchat.demo.run import run_demo

    run_demo(args.workdir, fresh=args.fresh, preset=args.preset)
    return 0
