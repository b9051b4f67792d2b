"""`bloomchat prepare` and `bloomchat data-report`, registered at the top: the data stage's verbs,
plus `prepare --recipe`, which needs the recipe reader of the train stage. Stages import
downward only (train imports data), so the data stage cannot read recipes itself; this module
sits above both and hands data's CLI the resolver.

    bloomchat prepare --recipe recipes/bloomchat-176b.yaml --stage stage2-oasst1-dolly \
        --set oasst1=oasst1.messages.jsonl --set dolly=dolly.jsonl -o stage2.jsonl
"""

from __future__ import annotations

from pathlib import Path

from bloomchat.errors import BloomchatError


def add_parser(subparsers) -> None:
    from bloomchat.data import cli as data_cli

    data_cli.add_parser(subparsers, resolve_recipe=recipe_prepare_kwargs)


def recipe_prepare_kwargs(recipe_path: Path, stage: str | None, vars: dict[str, str]) -> dict:
    """prepare()'s keyword arguments for one recipe stage (default: the first with raw sources)."""
    from bloomchat.train.recipe import load_recipe

    recipe = load_recipe(recipe_path, vars=vars, only_stage=stage)
    stages = [s for s in recipe.stages if s.data.is_raw]
    if stage is not None:
        stages = [s for s in recipe.stages if s.name == stage]
        if not stages:
            raise BloomchatError(f"no stage named {stage!r} (stages: {', '.join(s.name for s in recipe.stages)})",
                                 where=str(recipe_path))
        if not stages[0].data.is_raw:
            what = ("preference pairs (prepare them with `bloomchat prepare-pairs`)" if stages[0].data.pairs
                    else "packed shards")
            raise BloomchatError(f"stage {stage!r} uses {what}, not raw sources", where=str(recipe_path))
    if not stages:
        raise BloomchatError("no stage with raw sources (oig/dolly/oasst1/jsonl)", where=str(recipe_path))
    d = stages[0].data
    return {"oig": d.oig, "dolly": d.dolly, "oasst1": d.oasst1, "jsonl": d.jsonl, "seed": recipe.seed,
            "per_source": d.per_source, **d.prepare}
