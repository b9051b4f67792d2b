"""The training loop of a recipe: stages in order, each starting from the one before.

    bloomchat train recipes/demo.yaml --set workdir=/abs/demo
    accelerate launch --config_file recipes/accelerate/fsdp.yaml -m bloomchat.train recipes/bloom-560m-lora.yaml

Why a loop of our own rather than `transformers.Trainer`: the loss is normalised per loss token
over the whole global batch (every process knows the normaliser up front from the shards' row
counts), the LM head runs only where a loss is taken, packed conversations are kept apart with a
block-diagonal mask, and the data position is a pure function of the step, which makes resuming
exact. Everything else (devices, DDP/FSDP/DeepSpeed, mixed precision, state saving) is accelerate.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bloomchat.chat_format import CHAT_TEMPLATE
from bloomchat.errors import BloomchatError
from bloomchat.train.accel import make_accelerator
from bloomchat.train.checkpoint import (latest_checkpoint, load_checkpoint, save_checkpoint, trainable_only,
                                        write_text_atomic)
from bloomchat.train.faults import is_write_fault, write_fault, writing
from bloomchat.train.data import GPU_PAD_MULTIPLE, PackedSplit, Schedule, collate
from bloomchat.train.packing_attn import install_packed_attention, is_bloom, packed_forward, uninstall_packed_attention
from bloomchat.train.plan import check_base, format_plan, linear_module_names, make_plan, missing_lora_targets
from bloomchat.train.recipe import Recipe, Stage, load_recipe
from bloomchat.train.report import MetricsLog, earlier_stages, model_card, plot_loss, read_metrics
from bloomchat.train.stage_data import ensure_packed

RESULT = "result.json"


def lr_at(stage: Stage, step: int, total: int) -> float:
    """Learning rate of optimizer step `step` (0-based): warmup, then constant, or linear/cosine
    decay from lr to lr x lr_end_ratio (reached at t = 1, i.e. after the last step)."""
    if step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    if stage.lr_schedule == "constant":
        return stage.lr
    span = max(1, total - stage.warmup_steps)
    t = min(1.0, (step - stage.warmup_steps) / span)
    frac = (1.0 - t) if stage.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))
    end = stage.lr_end_ratio
    return stage.lr * (end + (1.0 - end) * frac)


def _optimizer(model, stage: Stage):
    """AdamW; no weight decay on biases and LayerNorm weights (as transformers.Trainer does)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "layernorm" in name.lower() or "ln_f" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": stage.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=stage.lr, betas=tuple(stage.adam_betas),
                             eps=stage.adam_eps)


def _embedding_rows(model) -> int:
    """Rows of the input embedding; under DeepSpeed ZeRO-3 the local tensor is an empty shard and
    the full shape is kept in `ds_shape`."""
    w = model.get_input_embeddings().weight
    return int(getattr(w, "ds_shape", w.shape)[0])


def _load_base(src: str, tokenizer, gradient_checkpointing: bool):
    from bloomchat.models import load_model

    model = load_model(src, dtype="float32")
    vocab = _embedding_rows(model)
    if len(tokenizer) > vocab:
        raise BloomchatError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab}: "
                             "they do not belong together (set `tokenizer:` in the recipe to the model's own)",
                             where=src)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model


def _check_vocab(src: str, tokenizer) -> None:
    """Refuse a tokenizer with ids beyond the model's embedding before any data is prepared."""
    from transformers import AutoConfig

    try:
        vocab = AutoConfig.from_pretrained(src).vocab_size
    except (OSError, ValueError) as e:
        raise BloomchatError(f"cannot load model config: {str(e).splitlines()[0]}", where=src) from None
    if vocab is not None and len(tokenizer) > vocab:
        raise BloomchatError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab}: "
                             "they do not belong together (set `tokenizer:` in the recipe to the model's own)",
                             where=src)


def _add_lora(model, recipe: Recipe):
    from peft import LoraConfig, get_peft_model

    cfg = recipe.lora
    missing = missing_lora_targets(model, list(cfg.target_modules))
    if missing:
        raise BloomchatError(f"LoRA target module(s) {', '.join(missing)} not in this model; its linear layers "
                             f"are: {', '.join(linear_module_names(model))}", where=f"{recipe.path} lora.target_modules")
    if recipe.gradient_checkpointing:
        model.enable_input_require_grads()
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=cfg.r, lora_alpha=cfg.alpha,
                                            lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules)))


def _init_source(recipe: Recipe, idx: int, stage: Stage) -> str:
    if stage.init_from == "base":
        return recipe.base_model
    if stage.init_from == "previous":
        return str(recipe.stage_dir(recipe.stages[idx - 1]) / "model")
    for s in recipe.stages[:idx]:
        if s.name == stage.init_from:
            return str(recipe.stage_dir(s) / "model")
    return stage.init_from


def _pad_multiple(device: torch.device) -> int:
    """Row lengths a multiple of GPU_PAD_MULTIPLE on a GPU (few shapes for cuDNN attention's
    plan cache); exact on CPU, where any length costs the same to set up."""
    return GPU_PAD_MULTIPLE if device.type == "cuda" else 1


def _pad_id(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if t is not None:
            return int(t)
    return 0


def _export(accelerator, model, tokenizer, recipe: Recipe, stage_dir: Path, card: str) -> Path:
    """Final model of the stage in HF layout, written to a temp dir and renamed into place."""
    from bloomchat.models import save_pretrained
    from bloomchat.models.tokenizer import save_tokenizer

    sharded = accelerator.distributed_type.name in ("DEEPSPEED", "FSDP")
    state_dict = accelerator.get_state_dict(model) if sharded and recipe.method == "full" else None
    out = stage_dir / "model"
    if accelerator.is_main_process:
        tmp = stage_dir / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        m = accelerator.unwrap_model(model)
        if recipe.method == "lora":
            m = m.merge_and_unload()
        uninstall_packed_attention(m)
        template = tokenizer.chat_template
        if recipe.chat_format == "bloomchat":  # the format it was trained in, whatever the base's template
            tokenizer.chat_template = CHAT_TEMPLATE
        try:
            if state_dict is not None:
                tmp.mkdir(parents=True)
                state_dict = _untie(state_dict, m)
                m.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
                save_tokenizer(tokenizer, tmp)
            else:
                save_pretrained(m, tokenizer, tmp)
            (tmp / "README.md").write_text(card, encoding="utf-8")
        except Exception as e:  # a full disk: OSError, or SafetensorError from safetensors
            shutil.rmtree(tmp, ignore_errors=True)
            if not is_write_fault(e):
                raise
            raise write_fault("the stage's model", out, e) from None
        finally:
            tokenizer.chat_template = template
        with writing("the stage's model", out):
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
    accelerator.wait_for_everyone()
    return out


def _untie(state_dict: dict, model) -> dict:
    """A gathered FSDP / ZeRO-3 state dict holds tied weights (lm_head = embeddings) as separate
    copies, which transformers then writes twice; drop the tied ones as an unsharded save does."""
    tied = model.get_expanded_tied_weights_keys(all_submodels=True) if hasattr(
        model, "get_expanded_tied_weights_keys") else {}
    return {k: v for k, v in state_dict.items() if not (k in tied and tied[k] in state_dict)}


def loss_step(model, batch: dict, device, *, bloom: bool | None = None) -> torch.Tensor:
    """Weighted sum of token losses of one packed micro-batch: the one loss of training and the
    dev pass (a preference stage would add its own step next to this one, not a second loop)."""
    logits = packed_forward(model, batch["input_ids"].to(device), batch["segment_ids"].to(device),
                            batch["flat_index"].to(device), bloom=bloom)
    ce = F.cross_entropy(logits.float(), batch["targets"].to(device), reduction="none")
    return (ce * batch["weights"].to(device)).sum()


@torch.no_grad()
def _dev_loss(model, split: PackedSplit, *, micro: int, pad_id: int, plw: float, accelerator) -> float | None:
    """Mean loss per loss token on the dev split (each process a share, summed)."""
    model.eval()
    n, world = len(split), accelerator.num_processes
    tot = torch.zeros(2, dtype=torch.float64)
    # Every process runs the same number of forward passes: FSDP / ZeRO-3 gather each layer's
    # weights from all ranks in every forward, so a rank that stopped early would leave the others
    # waiting forever. A rank without rows of its own runs one row with weight 0 (as in training).
    for k in range(math.ceil(n / (micro * world))):
        start = (k * world + accelerator.process_index) * micro
        dummy = start >= n
        dev = accelerator.device
        b = collate(split.rows(list(range(start, min(n, start + micro))) if not dummy else [0]), pad_id=pad_id,
                    prompt_loss_weight=plw, pad_to_multiple_of=_pad_multiple(dev))
        loss_sum = loss_step(model, b, dev)
        if not dummy:
            tot += torch.tensor([float(loss_sum), float(b["weights"].sum())], dtype=torch.float64)
    tot = accelerator.reduce(tot.to(accelerator.device), reduction="sum").cpu()
    model.train()
    return float(tot[0] / tot[1]) if tot[1] > 0 else None


def train_stage(recipe: Recipe, idx: int, tokenizer, accelerator, *, resume: bool, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    from bloomchat.pack import check_tokenizer_matches

    stage = recipe.stages[idx]
    sd = recipe.stage_dir(stage)
    result_path = sd / RESULT
    if resume and result_path.exists() and (sd / "model" / "config.json").exists():
        res = json.loads(result_path.read_text(encoding="utf-8"))
        if accelerator.is_main_process:
            print(f"stage {stage.name}: already complete, skipped ({sd / 'model'})")
        return res
    ckpt_root = sd / "checkpoints"
    latest = latest_checkpoint(ckpt_root) if ckpt_root.exists() else None
    if latest is not None and not resume:
        raise BloomchatError(f"stage {stage.name} already has checkpoints ({latest.name}); pass --resume to "
                             f"continue it, or delete {sd} to start over", where=str(sd))
    if accelerator.is_main_process:
        with writing("the stage's folder", sd):
            sd.mkdir(parents=True, exist_ok=True)
            result_path.unlink(missing_ok=True)

    init = _init_source(recipe, idx, stage)
    _check_vocab(init, tokenizer)
    shards, prep_summary = ensure_packed(recipe, stage, tokenizer, accelerator=accelerator)
    data_stats = check_tokenizer_matches(shards, tokenizer)
    with accelerator.main_process_first():
        train = PackedSplit(shards, "train", cache_dir=sd / "cache")
        dev = PackedSplit(shards, "dev", cache_dir=sd / "cache") if any((shards / "dev").glob("*.parquet")) else None
    if len(train) == 0:
        raise BloomchatError("the stage's training split has no rows", where=str(shards))

    from accelerate.utils import set_seed

    set_seed(recipe.seed + idx)
    model = _load_base(init, tokenizer, recipe.gradient_checkpointing)
    vocab = _embedding_rows(model)
    if train.stats.max_id >= vocab:
        raise BloomchatError(f"shards hold token id {train.stats.max_id}, outside the model's vocabulary of {vocab}",
                             where=str(shards))
    bloom = is_bloom(model)
    try:
        install_packed_attention(model, kernel=recipe.attention)
    except ValueError as e:  # e.g. attention: flex on a bloomchat without that kernel
        raise BloomchatError(str(e), where=f"{recipe.path} attention") from None
    if recipe.method == "lora":
        model = _add_lora(model, recipe)
    model.train()
    optimizer = _optimizer(model, stage)
    world, rank = accelerator.num_processes, accelerator.process_index
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
    hooks = trainable_only(accelerator, model) if recipe.method == "lora" else []
    trainable = {n for n, p in model.named_parameters() if p.requires_grad} if hooks else None
    total = sched.total_steps

    start = 0
    if latest is not None:
        state = load_checkpoint(accelerator, latest, trainable=trainable)
        if state.get("stage") != stage.name or state.get("rows") != len(train):
            raise BloomchatError(f"checkpoint {latest.name} belongs to another run (stage {state.get('stage')}, "
                                 f"{state.get('rows')} rows; now {stage.name}, {len(train)} rows)", where=str(latest))
        start = int(state["step"])
    log = MetricsLog(sd / "metrics.jsonl", resume_step=start if latest is not None else None,
                     enabled=accelerator.is_main_process)
    pad_id = _pad_id(tokenizer)
    plw = stage.prompt_loss_weight
    device = accelerator.device
    scale = sched.accum * world  # undo the mean over micro-batches (accelerate) and processes (DDP)
    bar = tqdm(total=total, initial=start, desc=f"train {stage.name}", unit="step",
               disable=not (progress and accelerator.is_main_process), dynamic_ncols=True)
    tokens_done = loss_tokens_done = tokens_run = 0
    if latest is not None:
        for r in read_metrics(sd / "metrics.jsonl"):
            if r.get("kind", "train") == "train" and r["step"] <= start:
                tokens_done += r["tokens"]
                loss_tokens_done += r["loss_tokens"]
    last_loss = None
    t0 = time.perf_counter()
    for step in range(start, total):
        rows = sched.step_rows(step)
        norm = max(train.stats.weight(rows, plw), 1e-8)
        lr = lr_at(stage, step, total)
        for g in optimizer.param_groups:
            g["lr"] = lr
        acc = torch.zeros(3, dtype=torch.float64)  # weighted loss sum, tokens, loss tokens
        grad_norm = None
        for micro in range(sched.accum):
            slot = sched.slot_rows(rows, micro, rank)
            dummy = len(slot) == 0  # a short last batch: this process still joins the gradient sync
            b = collate(train.rows(list(slot if not dummy else rows[:1])), pad_id=pad_id, prompt_loss_weight=plw,
                        pad_to_multiple_of=_pad_multiple(device))
            with accelerator.accumulate(model):
                loss_sum = loss_step(model, b, device, bloom=bloom) * (0.0 if dummy else 1.0)
                accelerator.backward(loss_sum * (scale / norm))
                if accelerator.sync_gradients and stage.max_grad_norm is not None:
                    gn = accelerator.clip_grad_norm_(model.parameters(), stage.max_grad_norm)
                    grad_norm = float(gn) if gn is not None else None
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not dummy:
                acc += torch.tensor([float(loss_sum.detach()), b["tokens"], b["loss_tokens"]], dtype=torch.float64)
        acc = accelerator.reduce(acc.to(device), reduction="sum").cpu()
        last_loss = float(acc[0]) / norm
        if not math.isfinite(last_loss):
            raise BloomchatError(f"loss became {last_loss} at step {step + 1}; lower lr or check the data",
                                 where=f"{recipe.path} stages[{idx}].lr")
        tokens_done += int(acc[1])
        tokens_run += int(acc[1])
        loss_tokens_done += int(acc[2])
        elapsed = time.perf_counter() - t0
        rec = {"kind": "train", "stage": stage.name, "step": step + 1, "epoch": round(sched.epoch_of(step + 1), 4),
               "loss": last_loss, "lr": lr, "grad_norm": grad_norm, "tokens": int(acc[1]), "loss_tokens": int(acc[2]),
               "tokens_per_s": round(tokens_run / elapsed, 1),
               "elapsed_s": round(elapsed, 3)}
        if (step + 1) % stage.log_every_steps == 0 or step + 1 == total:
            log.write(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tokens_run / max(elapsed, 1e-9):.0f}")
        if stage.save_every_steps and (step + 1) % stage.save_every_steps == 0 and step + 1 < total:
            save_checkpoint(accelerator, ckpt_root, step + 1, _state(stage, step + 1, total, len(train)),
                            keep=stage.keep_checkpoints)
    bar.close()
    if start < total or latest is None:
        save_checkpoint(accelerator, ckpt_root, total, _state(stage, total, total, len(train)), keep=stage.keep_checkpoints)
    if last_loss is None:  # resumed from the final checkpoint: take the loss from the log
        trains = [r for r in read_metrics(sd / "metrics.jsonl") if r.get("kind", "train") == "train"]
        last_loss = trains[-1]["loss"] if trains else None
    dev_loss = _dev_loss(model, dev, micro=stage.micro_batch_size, pad_id=pad_id, plw=plw,
                         accelerator=accelerator) if dev is not None else None
    if dev_loss is not None:
        log.write({"kind": "dev", "stage": stage.name, "step": total, "loss": dev_loss})
    log.close()
    result = {"name": stage.name, "init_from": init, "model_dir": str(sd / "model"), "final_loss": last_loss,
              "dev_loss": dev_loss, "steps": total, "tokens": tokens_done, "loss_tokens": loss_tokens_done,
              "rows": len(train), "seconds": round(time.perf_counter() - t0, 2), "processes": world,
              "distributed_type": accelerator.distributed_type.name,
              "metrics": str(sd / "metrics.jsonl"), "loss_plot": str(sd / "loss.png"),
              "checkpoints": str(ckpt_root), "shards": str(shards)}
    card = model_card(recipe=recipe, stage=stage, data_stats=data_stats, prepare_summary=prep_summary,
                      result=result, lineage=earlier_stages(recipe, idx))
    _export(accelerator, model, tokenizer, recipe, sd, card)
    if accelerator.is_main_process:
        with writing("the stage's results", sd):
            plot_loss(sd / "metrics.jsonl", sd / "loss.png", f"{recipe.name} / {stage.name}")
            write_text_atomic(result_path, json.dumps(result, indent=1))
    accelerator.wait_for_everyone()
    for h in hooks:
        h.remove()
    accelerator.free_memory()
    del model, optimizer
    return result


def _state(stage: Stage, step: int, total: int, rows: int) -> dict:
    return {"stage": stage.name, "step": step, "total_steps": total, "rows": rows}


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
