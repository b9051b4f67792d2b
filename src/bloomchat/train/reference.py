"""Reference log-probs of a dpo / ipo stage: computed once per pair before the first step and
stored in the stage folder, so no second model sits in memory while training.

The reference is the stage's initial weights: with LoRA the same model with its adapter
switched off (`disable_adapter`, the base weights are frozen), with full fine-tuning the model
before its first optimizer step. The pass runs like the dev pass (eval mode, every process a
share of the rows, the same number of forwards on each) through the packed forward training
uses, so an untrained policy scores exactly its reference. Files:

    STAGE/reference/{train,dev}.npy     (pairs, 2) float64: chosen, rejected summed log-probs
    STAGE/reference/spec.json           what they were computed from (init, shards, method ...)

A resumed stage reads them back; if they are missing or belong to other data, LoRA computes them
again (the adapter-off model has not changed), full fine-tuning refuses (its weights have).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from bloomchat.errors import BloomchatError
from bloomchat.train.faults import writing
from bloomchat.train.loop import StageRun, micro_batch
from bloomchat.train.pair_data import PairSplit
from bloomchat.train.preference import pair_logps

REF_DIR = "reference"


def reference_spec(run: StageRun, init: str, shards: Path) -> dict:
    stats = (Path(shards) / "stats.json").read_bytes()
    lora = run.recipe.lora
    return {"init": init, "shards_stats": hashlib.sha256(stats).hexdigest(), "method": run.recipe.method,
            "precision": run.recipe.precision, "attention": run.recipe.attention,
            "lora": [lora.r, lora.alpha, list(lora.target_modules)] if lora else None}


@torch.no_grad()
def compute_reference(run: StageRun, split: PairSplit, *, progress: bool = False) -> torch.Tensor:
    """(pairs, 2) float64 log-probs of every pair under the reference (see module doc)."""
    from tqdm.auto import tqdm

    acc, model, micro = run.accelerator, run.model, run.stage.micro_batch_size
    n, world = len(split), acc.num_processes
    total = torch.zeros(split.n_pairs, 2, dtype=torch.float64)
    adapter_off = (acc.unwrap_model(model).disable_adapter() if run.recipe.method == "lora"
                   else contextlib.nullcontext())
    model.eval()
    steps = math.ceil(n / (micro * world))
    with adapter_off:
        for k in tqdm(range(steps), desc=f"reference {split.split}", unit="batch", leave=False,
                      disable=not (progress and acc.is_main_process)):
            start = (k * world + acc.process_index) * micro
            b, dummy = micro_batch(split, range(start, min(n, start + micro)), [0], pad_id=run.pad_id, plw=0.0,
                                   device=acc.device)
            lp = pair_logps(model, b, acc.device, bloom=run.bloom)
            if not dummy:
                total[b["pair_index"]] = lp.double().cpu()
    model.train()
    return acc.reduce(total.to(acc.device), reduction="sum").cpu()


def attach_reference(run: StageRun, *, init: str, shards: Path, resumed: bool, progress: bool = False) -> None:
    """Give each split its reference log-probs: read back when stored for the same spec, else
    computed (refused for a resumed full fine-tuning stage, whose weights have moved)."""
    folder = run.stage_dir / REF_DIR
    spec = reference_spec(run, init, shards)
    spec_path = folder / "spec.json"
    have = spec_path.exists() and json.loads(spec_path.read_text(encoding="utf-8")) == spec
    splits = {"train": run.train_split, "dev": run.dev_split}
    for name, split in splits.items():
        if split is None:
            continue
        path = folder / f"{name}.npy"
        if have and path.exists():
            ref = torch.from_numpy(np.load(path))
            if ref.shape == (split.n_pairs, 2):
                split.ref = ref
                continue
        if resumed and run.recipe.method == "full":
            raise BloomchatError(f"the reference log-probs of this stage ({path}) are missing or were made for other "
                                 "data, and its weights have moved since the start: delete the stage folder to "
                                 "start it over", where=str(run.stage_dir))
        split.ref = compute_reference(run, split, progress=progress)
        if run.accelerator.is_main_process:
            with writing("the reference log-probs", folder):
                folder.mkdir(parents=True, exist_ok=True)
                np.save(path, split.ref.numpy())
    if run.accelerator.is_main_process and not have:
        with writing("the reference log-probs", folder):
            spec_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    run.accelerator.wait_for_everyone()
