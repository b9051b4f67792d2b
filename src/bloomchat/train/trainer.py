"""The training loop of a recipe: stages in order, each starting from the one before.

    bloomchat train recipes/demo.yaml --set workdir=/abs/demo
    accelerate launch --config_file recipes/accelerate/fsdp.yaml -m bloomchat.train recipes/bloom-560m-lora.yaml

Why a loop of our own rather than `transformers.Trainer`: the loss is normalised per loss token
over the whole global batch (every process knows the normaliser up front from the shards' row
counts), the LM head runs only where a loss is taken, packed conversations are kept apart with a
block-diagonal mask, and the data position is a pure function of the step, which makes resuming
exact. Everything else (devices, DDP/FSDP/DeepSpeed, mixed precision, state saving) is accelerate.

A stage reads top to bottom as: stage folder -> data (stage_data, setup.open_splits) ->
setup_stage (setup.py: model, LoRA, optimizer; accelerate.prepare) -> restore -> loop.train_loop
(one loss step, loop.loss_step, shared with the dev pass) -> final checkpoint -> dev pass ->
export.export_model -> result.json. Each training record carries model TFLOP/s and, when one
device's peak is known ($BLOOMCHAT_PEAK_TFLOPS or the GPU table in mfu.py), MFU.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bloomchat.errors import BloomchatError
from bloomchat.train.accel import make_accelerator
from bloomchat.train.checkpoint import (latest_checkpoint, load_checkpoint, save_checkpoint, trainable_only,
                                        write_text_atomic)
from bloomchat.train.data import PackedSplit, Schedule
from bloomchat.train.export import export_model
from bloomchat.train.faults import writing
from bloomchat.train.loop import StageRun, Tally, dev_loss, lr_at, throughput, train_loop  # noqa: F401 (lr_at)
from bloomchat.train.mfu import device_peak
from bloomchat.train.plan import check_base, format_plan, make_plan
from bloomchat.train.preference_stage import attach_preference, preference_data
from bloomchat.train.recipe import Recipe, load_recipe
from bloomchat.train.report import MetricsLog, earlier_stages, model_card, plot_loss, read_metrics
from bloomchat.train.setup import check_vocab, init_source, make_optimizer, open_splits, pad_id, setup_model
from bloomchat.train.stage_data import ensure_packed

RESULT = "result.json"


def _finished(recipe: Recipe, idx: int, accelerator, resume: bool) -> dict | None:
    """The result of a stage that --resume finds complete (model exported, result written)."""
    stage = recipe.stages[idx]
    sd = recipe.stage_dir(stage)
    if not (resume and (sd / RESULT).exists() and (sd / "model" / "config.json").exists()):
        return None
    if accelerator.is_main_process:
        print(f"stage {stage.name}: already complete, skipped ({sd / 'model'})")
    return json.loads((sd / RESULT).read_text(encoding="utf-8"))


def _open_stage_dir(recipe: Recipe, idx: int, accelerator, resume: bool) -> Path | None:
    """Create the stage's folder; returns the checkpoint to resume from (refused without --resume)."""
    stage = recipe.stages[idx]
    sd = recipe.stage_dir(stage)
    ckpt_root = sd / "checkpoints"
    latest = latest_checkpoint(ckpt_root) if ckpt_root.exists() else None
    if latest is not None and not resume:
        raise BloomchatError(f"stage {stage.name} already has checkpoints ({latest.name}); pass --resume to "
                             f"continue it, or delete {sd} to start over", where=str(sd))
    if accelerator.is_main_process:
        with writing("the stage's folder", sd):
            sd.mkdir(parents=True, exist_ok=True)
            (sd / RESULT).unlink(missing_ok=True)
    return latest


def setup_stage(recipe: Recipe, idx: int, tokenizer, accelerator, *, init: str, shards: Path,
                splits: tuple[PackedSplit, PackedSplit | None]) -> StageRun:
    """Model, optimizer and schedule of a stage, prepared by accelerate (DDP / FSDP / DeepSpeed)."""
    from accelerate.utils import set_seed

    stage, (train, dev) = recipe.stages[idx], splits
    world = accelerator.num_processes
    set_seed(recipe.seed + idx)
    model, bloom, shape = setup_model(recipe, init, tokenizer, train, shards)
    optimizer = make_optimizer(model, stage)
    sched = Schedule(n_rows=len(train), global_batch=stage.global_batch_size, micro_batch=stage.micro_batch_size,
                     world_size=world, epochs=stage.epochs, max_steps=stage.max_steps, seed=recipe.seed + idx)
    if stage.global_batch_size % (stage.micro_batch_size * world):
        raise BloomchatError(f"global_batch_size {stage.global_batch_size} is not a multiple of micro_batch_size "
                             f"{stage.micro_batch_size} x {world} processes", where=f"{recipe.path} stages[{idx}]")
    accelerator.gradient_accumulation_steps = sched.accum  # before prepare: DeepSpeed reads it there
    ds = getattr(accelerator.state, "deepspeed_plugin", None)
    if ds is not None:  # no dataloader is prepared, so DeepSpeed learns the batch shape from the recipe
        ds.deepspeed_config["train_micro_batch_size_per_gpu"] = stage.micro_batch_size
        ds.deepspeed_config["gradient_accumulation_steps"] = sched.accum
        ds.deepspeed_config["gradient_clipping"] = stage.max_grad_norm or 0.0
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.step = 0
    peak, _ = device_peak(accelerator.device, recipe.precision)
    return StageRun(recipe=recipe, idx=idx, accelerator=accelerator, model=model, optimizer=optimizer,
                    train_split=train, dev_split=dev, sched=sched, pad_id=pad_id(tokenizer), bloom=bloom,
                    shape=shape, peak_tflops=peak)


def _restore(run: StageRun, latest: Path | None, trainable: set[str] | None) -> int:
    """The step to start at: 0, or the one of the checkpoint, restored (weights, optimizer, RNG)."""
    if latest is None:
        return 0
    state = load_checkpoint(run.accelerator, latest, trainable=trainable)
    if state.get("stage") != run.stage.name or state.get("rows") != len(run.train_split):
        raise BloomchatError(f"checkpoint {latest.name} belongs to another run (stage {state.get('stage')}, "
                             f"{state.get('rows')} rows; now {run.stage.name}, {len(run.train_split)} rows)",
                             where=str(latest))
    return int(state["step"])


def _train(run: StageRun, latest: Path | None, trainable: set[str] | None,
           progress: bool) -> tuple[Tally, float | None]:
    """Restore, loop, final checkpoint, dev pass; returns the tally and the dev loss."""
    from tqdm.auto import tqdm

    acc, stage, sd, total = run.accelerator, run.stage, run.stage_dir, run.sched.total_steps
    start = _restore(run, latest, trainable)
    metrics = sd / "metrics.jsonl"
    log = MetricsLog(metrics, resume_step=start if latest is not None else None, enabled=acc.is_main_process)
    bar = tqdm(total=total, initial=start, desc=f"train {stage.name}", unit="step",
               disable=not (progress and acc.is_main_process), dynamic_ncols=True)
    if run.peak_tflops is None and not bar.disable:
        bar.write(f"MFU not shown: {device_peak(acc.device, run.recipe.precision)[1]}", file=sys.stderr)
    tally = Tally.resumed(metrics, start) if latest is not None else Tally()
    train_loop(run, start, log, tally, bar)
    bar.close()
    if start < total or latest is None:
        save_checkpoint(acc, run.ckpt_root, total, run.state(total), keep=stage.keep_checkpoints)
    if tally.last_loss is None:  # resumed from the final checkpoint: take the loss from the log
        trains = [r for r in read_metrics(metrics) if r.get("kind", "train") == "train"]
        tally.last_loss = trains[-1]["loss"] if trains else None
    dev = dev_loss(run.model, run.dev_split, micro=stage.micro_batch_size, pad_id=run.pad_id,
                   plw=stage.prompt_loss_weight, accelerator=acc,
                   step=run.loss_step) if run.dev_split is not None else None
    run.dev_metrics = run.metrics("dev") if run.metrics is not None and run.dev_split is not None else {}
    if dev is not None:
        log.write({"kind": "dev", "stage": stage.name, "step": total, "loss": dev, **run.dev_metrics})
    log.close()
    return tally, dev


def _result(run: StageRun, tally: Tally, dev: float | None, *, init: str, shards: Path) -> dict:
    sd, acc = run.stage_dir, run.accelerator
    speed = {k: v for k, v in throughput(run, tally).items() if k in ("tflops", "mfu")}
    speed.update(model_flops=tally.flops_run, peak_tflops=run.peak_tflops,
                 peak_source=device_peak(acc.device, run.recipe.precision)[1])
    pref = {"kind": run.stage.kind, "loss": run.stage.loss, "dev_metrics": run.dev_metrics} \
        if run.stage.kind != "sft" else {}
    return {"name": run.stage.name, "init_from": init, "model_dir": str(sd / "model"), "final_loss": tally.last_loss,
            "dev_loss": dev, **pref, "steps": run.sched.total_steps, "tokens": tally.tokens,
            "loss_tokens": tally.loss_tokens,
            "rows": len(run.train_split), "seconds": round(tally.elapsed, 2), "processes": acc.num_processes,
            "distributed_type": acc.distributed_type.name, **speed,
            "metrics": str(sd / "metrics.jsonl"), "loss_plot": str(sd / "loss.png"),
            "checkpoints": str(run.ckpt_root), "shards": str(shards)}


def train_stage(recipe: Recipe, idx: int, tokenizer, accelerator, *, resume: bool, progress: bool = True) -> dict:
    """Set up, train, evaluate on the dev split and export one stage; returns its result."""
    from bloomchat.pack import check_tokenizer_matches

    done = _finished(recipe, idx, accelerator, resume)
    if done is not None:
        return done
    stage = recipe.stages[idx]
    sd = recipe.stage_dir(stage)
    latest = _open_stage_dir(recipe, idx, accelerator, resume)
    init = init_source(recipe, idx, stage)
    check_vocab(init, tokenizer)
    if stage.kind == "dpo":
        shards, splits = preference_data(recipe, idx, tokenizer, accelerator)
        prep_summary = None
    else:
        shards, prep_summary = ensure_packed(recipe, stage, tokenizer, accelerator=accelerator)
    data_stats = check_tokenizer_matches(shards, tokenizer)
    if stage.kind != "dpo":
        splits = open_splits(shards, sd, accelerator)
    run = setup_stage(recipe, idx, tokenizer, accelerator, init=init, shards=shards, splits=splits)
    if stage.kind == "dpo":  # before any checkpoint is restored: the reference is the initial weights
        attach_preference(run, init=init, shards=shards, resumed=latest is not None, progress=progress)
    hooks = trainable_only(accelerator, run.model) if recipe.method == "lora" else []
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad} if hooks else None
    tally, dev = _train(run, latest, trainable, progress)
    result = _result(run, tally, dev, init=init, shards=shards)
    card = model_card(recipe=recipe, stage=stage, data_stats=data_stats, prepare_summary=prep_summary,
                      result=result, lineage=earlier_stages(recipe, idx))
    export_model(accelerator, run.model, tokenizer, recipe, sd, card)
    if accelerator.is_main_process:
        with writing("the stage's results", sd):
            plot_loss(sd / "metrics.jsonl", sd / "loss.png", f"{recipe.name} / {stage.name}")
            write_text_atomic(sd / RESULT, json.dumps(result, indent=1))
    accelerator.wait_for_everyone()
    for h in hooks:
        h.remove()
    accelerator.free_memory()
    del run
    return result


def run_recipe(recipe: Path | str | Recipe, *, vars: dict[str, str] | None = None, resume: bool = False,
               dry_run: bool = False, progress: bool = True) -> dict:
    """Run (or with dry_run only plan) every stage of a recipe; returns per-stage results.

    {"stages": [{"name", "model_dir", "final_loss", "steps", "tokens", ...}], "final_model_dir": ...}
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, vars=vars)
    if not dry_run:
        check_base(recipe)  # make_plan runs it too
    if dry_run:
        plan = make_plan(recipe)
        plan["text"] = format_plan(plan)
        return plan
    from bloomchat.models import load_tokenizer

    accelerator = make_accelerator(recipe)
    tokenizer = load_tokenizer(recipe.tokenizer or recipe.base_model)
    results = []
    t0 = time.perf_counter()
    for i in range(len(recipe.stages)):
        results.append(train_stage(recipe, i, tokenizer, accelerator, resume=resume, progress=progress))
    out = {"recipe": str(recipe.path) if recipe.path else recipe.name, "name": recipe.name,
           "output_dir": str(recipe.output_dir), "stages": results,
           "final_model_dir": results[-1]["model_dir"], "seconds": round(time.perf_counter() - t0, 2)}
    if accelerator.is_main_process:
        with writing("the run's summary", recipe.output_dir):
            recipe.output_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(recipe.output_dir / "run.json", json.dumps(out, indent=1))
    return out
