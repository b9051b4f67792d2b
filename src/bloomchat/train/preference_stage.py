"""A preference stage (`kind: dpo`) set up on the SFT machinery: its data are packed pairs, its
loss step is `preference.PreferenceLoss`, and for dpo / ipo the reference log-probs are attached
before the first step. The loop, checkpoints, dev pass and export are the SFT stage's own.
"""

from __future__ import annotations

from pathlib import Path

from bloomchat.train.loop import StageRun
from bloomchat.train.pair_data import PairSplit
from bloomchat.train.preference import PreferenceConfig, PreferenceLoss
from bloomchat.train.recipe import Recipe
from bloomchat.train.reference import attach_reference
from bloomchat.train.setup import open_splits
from bloomchat.train.stage_data import ensure_pairs_packed


def preference_data(recipe: Recipe, idx: int, tokenizer,
                    accelerator) -> tuple[Path, tuple[PairSplit, PairSplit | None]]:
    """The stage's packed pairs (built when needed) and their train / dev splits."""
    stage = recipe.stages[idx]
    shards = ensure_pairs_packed(recipe, stage, tokenizer, accelerator=accelerator)
    return shards, open_splits(shards, recipe.stage_dir(stage), accelerator, PairSplit, "pairs")


def attach_preference(run: StageRun, *, init: str, shards: Path, resumed: bool, progress: bool = False) -> None:
    """Reference log-probs (dpo / ipo), the preference loss step and its metrics on `run` (with
    LoRA, any loss, the dev pass's KL to the adapter-off model)."""
    cfg = PreferenceConfig.of(run.stage)
    if cfg.needs_reference:
        attach_reference(run, init=init, shards=shards, resumed=resumed, progress=progress)
    # LoRA: the adapter off is the reference, so the dev pass can measure the exact next-token KL
    reference = ((lambda: run.accelerator.unwrap_model(run.model).disable_adapter())
                 if run.recipe.method == "lora" else None)
    step = PreferenceLoss(cfg, run.dev_split.langs if run.dev_split is not None else [], reference=reference)
    run.loss_step = step
    run.metrics = lambda mode: step.metrics(mode, run.accelerator)
