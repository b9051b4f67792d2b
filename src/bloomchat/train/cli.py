"""`bloomchat train RECIPE.yaml [--resume] [--dry-run] [--set name=value ...]`

    bloomchat train recipes/demo.yaml --set workdir=$PWD/bloomchat-demo --dry-run
    bloomchat train recipes/bloom-560m-lora.yaml --set oig=/data/OIG --set oasst1=/data/oasst1.jsonl --set dolly=/data/dolly.jsonl
    accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml -m bloomchat.train \
        recipes/bloomchat-176b.yaml --set oig=/data/OIG --set oasst1=... --set oasst1_train=... --set dolly=...
    bloomchat train RECIPE.yaml --resume        # after a crash: continues at the latest checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bloomchat.errors import BloomchatError


def _parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items or []:
        if "=" not in it or not it.split("=", 1)[0]:
            raise BloomchatError(f"--set expects name=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v
    return out


def _check_sets(recipe_path: str, sets: dict[str, str]) -> None:
    """A --set name the recipe never uses is a typo: with `${out:-default}` it would silently
    leave the default in place (e.g. 2 TB of checkpoints written somewhere unintended)."""
    from pathlib import Path

    from bloomchat.train.recipe import _VAR_RE

    p = Path(recipe_path).expanduser()
    if not p.is_file():
        return  # load_recipe reports the missing file
    used = {m.group(1) for m in _VAR_RE.finditer(p.read_text(encoding="utf-8"))}
    for name in sets:
        if name not in used:
            raise BloomchatError(f"--set {name}=...: the recipe has no ${{{name}}} placeholder (it has: "
                                 f"{', '.join(sorted(used)) or 'none'})", where=str(p))


def run(args) -> int:
    from bloomchat.train import run_recipe

    sets = _parse_sets(args.set)
    _check_sets(args.recipe, sets)
    result = run_recipe(args.recipe, vars=sets, resume=args.resume, dry_run=args.dry_run)
    if args.dry_run:
        if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch: the plan once, not per process
            return 0
        print(json.dumps({k: v for k, v in result.items() if k != "text"}, indent=1) if args.json else result["text"])
        return 0
    from accelerate import PartialState

    if PartialState().is_main_process:
        for s in result["stages"]:
            loss = f"{s['final_loss']:.4f}" if s.get("final_loss") is not None else "-"
            print(f"stage {s['name']}: {s['steps']} steps, final loss {loss}, model {s['model_dir']}")
        print(f"final model: {result['final_model_dir']}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="fine-tune a base model in stages from one recipe (BLOOMChat recipe)",
                              description="Run every stage of a training recipe (YAML).")
    p.add_argument("recipe", help="recipe YAML (see recipes/)")
    p.add_argument("--resume", action="store_true", help="continue at the latest checkpoint; skip finished stages")
    p.add_argument("--dry-run", action="store_true", help="validate the recipe and print the plan; train nothing")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", default=[],
                   help="fill a ${NAME} placeholder of the recipe (repeatable)")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m bloomchat.train` (accelerate launch)."""
    from bloomchat.errors import run_verb

    parser = argparse.ArgumentParser(prog="bloomchat train")
    sub = parser.add_subparsers(dest="verb")
    add_parser(sub)
    args = parser.parse_args(["train", *(argv if argv is not None else sys.argv[1:])])
    return run_verb(args)
