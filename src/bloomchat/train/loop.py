"""One loss step, shared by training and the dev pass, and the loop that steps the optimizer.

A stage with another objective (a preference stage, DPO) brings its own loss step
(`LossStep`: model, micro-batch -> weighted sum of token losses), a split whose `batch` adds
what that step reads and whose `stats.weight` is its normaliser, and optionally `metrics`, and
reuses the loop, the dev pass, checkpoints and export as they are (`preference_stage.py`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bloomchat.errors import BloomchatError
from bloomchat.train.checkpoint import save_checkpoint
from bloomchat.train.data import GPU_PAD_MULTIPLE, PackedSplit, Schedule
from bloomchat.train.mfu import ModelShape, batch_flops, mfu
from bloomchat.train.packing_attn import packed_forward
from bloomchat.train.recipe import Recipe, Stage
from bloomchat.train.report import MetricsLog, read_metrics


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


def loss_step(model, batch: dict, device, *, bloom: bool | None = None) -> torch.Tensor:
    """Weighted sum of token losses of one packed micro-batch (supervised fine-tuning)."""
    logits = packed_forward(model, batch["input_ids"].to(device), batch["segment_ids"].to(device),
                            batch["flat_index"].to(device), bloom=bloom)
    ce = F.cross_entropy(logits.float(), batch["targets"].to(device), reduction="none")
    return (ce * batch["weights"].to(device)).sum()


LossStep = Callable[..., torch.Tensor]


def pad_multiple(device: torch.device) -> int:
    """Row lengths a multiple of GPU_PAD_MULTIPLE on a GPU (few shapes for cuDNN attention's
    plan cache); exact on CPU, where any length costs the same to set up."""
    return GPU_PAD_MULTIPLE if device.type == "cuda" else 1


def micro_batch(split: PackedSplit, rows, filler, *, pad_id: int, plw: float, device) -> tuple[dict, bool]:
    """The collated rows, or, when this process has none (a short last batch), the `filler` rows
    as a dummy that the caller weights 0: every process must run the same forwards, because DDP
    syncs gradients and FSDP / ZeRO-3 gather each layer's weights from all ranks."""
    dummy = len(rows) == 0
    b = split.batch(list(filler if dummy else rows), pad_id=pad_id, prompt_loss_weight=plw,
                    pad_to_multiple_of=pad_multiple(device))
    b["dummy"] = dummy  # a loss step that keeps statistics leaves a dummy out of them
    return b, dummy


@torch.no_grad()
def dev_loss(model, split: PackedSplit, *, micro: int, pad_id: int, plw: float, accelerator,
             step: LossStep = loss_step) -> float | None:
    """Mean loss per loss token on the dev split (each process a share, summed)."""
    model.eval()
    n, world, device = len(split), accelerator.num_processes, accelerator.device
    tot = torch.zeros(2, dtype=torch.float64)
    for k in range(math.ceil(n / (micro * world))):  # the same number of forwards on every rank
        start = (k * world + accelerator.process_index) * micro
        b, dummy = micro_batch(split, range(start, min(n, start + micro)), [0], pad_id=pad_id, plw=plw,
                               device=device)
        loss_sum = step(model, b, device)
        if not dummy:  # normaliser: the batch's own ("norm": pairs of a preference batch) or its token weights
            tot += torch.tensor([float(loss_sum), float(b.get("norm", b["weights"].sum()))], dtype=torch.float64)
    tot = accelerator.reduce(tot.to(accelerator.device), reduction="sum").cpu()
    model.train()
    return float(tot[0] / tot[1]) if tot[1] > 0 else None


@dataclass
class StageRun:
    """A stage set up for training: what the loop, the dev pass and the export work on."""

    recipe: Recipe
    idx: int
    accelerator: Any
    model: Any
    optimizer: Any
    train_split: PackedSplit
    dev_split: PackedSplit | None
    sched: Schedule
    pad_id: int
    bloom: bool
    shape: ModelShape
    peak_tflops: float | None  # one device's; None: MFU is not reported
    loss_step: LossStep = loss_step
    #: statistics the loss step keeps (a preference stage's reward accuracy ...), reduced over the
    #: processes: called with "train" after every optimizer step on every process, "dev" after the dev pass
    metrics: Callable[[str], dict] | None = None
    dev_metrics: dict = field(default_factory=dict)  # metrics("dev") of the stage's dev pass

    @property
    def stage(self) -> Stage:
        return self.recipe.stages[self.idx]

    @property
    def stage_dir(self) -> Path:
        return self.recipe.stage_dir(self.stage)

    @property
    def ckpt_root(self) -> Path:
        return self.stage_dir / "checkpoints"

    def state(self, step: int) -> dict:
        """What a checkpoint records besides the weights: enough to refuse another run's checkpoint."""
        return {"stage": self.stage.name, "step": step, "total_steps": self.sched.total_steps,
                "rows": len(self.train_split)}


@dataclass
class Tally:
    """Running totals of a stage: over the whole stage (resumed runs included) and since this start."""

    tokens: int = 0
    loss_tokens: int = 0
    tokens_run: int = 0
    flops_run: float = 0.0
    last_loss: float | None = None
    t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def resumed(cls, metrics: Path, start: int) -> Tally:
        t = cls()
        for r in read_metrics(metrics):
            if r.get("kind", "train") == "train" and r["step"] <= start:
                t.tokens += r["tokens"]
                t.loss_tokens += r["loss_tokens"]
        return t

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def optimizer_step(run: StageRun, step: int, norm: float) -> tuple[torch.Tensor, float | None]:
    """Forward + backward over this process's micro-batches of `step`, then the optimizer step.
    Returns (summed over processes: weighted loss sum, tokens, loss tokens, model FLOPs; grad norm)."""
    acc_, model, stage, sched = run.accelerator, run.model, run.stage, run.sched
    device, rows = acc_.device, sched.step_rows(step)
    scale = sched.accum * acc_.num_processes  # undo the mean over micro-batches (accelerate) and processes (DDP)
    acc = torch.zeros(4, dtype=torch.float64)
    grad_norm = None
    for micro in range(sched.accum):
        b, dummy = micro_batch(run.train_split, sched.slot_rows(rows, micro, acc_.process_index), rows[:1],
                               pad_id=run.pad_id, plw=stage.prompt_loss_weight, device=device)
        with acc_.accumulate(model):
            loss_sum = run.loss_step(model, b, device, bloom=run.bloom) * (0.0 if dummy else 1.0)
            acc_.backward(loss_sum * (scale / norm))
            if acc_.sync_gradients and stage.max_grad_norm is not None:
                gn = acc_.clip_grad_norm_(model.parameters(), stage.max_grad_norm)
                grad_norm = float(gn) if gn is not None else None
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        if not dummy:
            flops = batch_flops(run.shape, b["segment_ids"], head_tokens=len(b["flat_index"]))
            acc += torch.tensor([float(loss_sum.detach()), b["tokens"], b["loss_tokens"], flops], dtype=torch.float64)
    return acc_.reduce(acc.to(device), reduction="sum").cpu(), grad_norm


def throughput(run: StageRun, tally: Tally) -> dict:
    """tokens/s, model TFLOP/s (all processes) and, when the device's peak is known, MFU."""
    elapsed = tally.elapsed
    out = {"tokens_per_s": round(tally.tokens_run / elapsed, 1), "elapsed_s": round(elapsed, 3),
           "tflops": float(f"{tally.flops_run / elapsed / 1e12:.4g}")}
    if run.peak_tflops and tally.tokens_run:
        m = mfu(tally.tokens_run / elapsed, tally.flops_run / tally.tokens_run,
                run.peak_tflops * run.accelerator.num_processes)
        out["mfu"] = float(f"{m:.4g}")
    return out


def train_loop(run: StageRun, start: int, log: MetricsLog, tally: Tally, bar) -> None:
    """Optimizer steps start..total: lr, one step, metrics, progress, checkpoints."""
    stage, total = run.stage, run.sched.total_steps
    plw = stage.prompt_loss_weight
    for step in range(start, total):
        norm = max(run.train_split.stats.weight(run.sched.step_rows(step), plw), 1e-8)
        lr = lr_at(stage, step, total)
        for g in run.optimizer.param_groups:
            g["lr"] = lr
        acc, grad_norm = optimizer_step(run, step, norm)
        tally.last_loss = float(acc[0]) / norm
        if not math.isfinite(tally.last_loss):
            raise BloomchatError(f"loss became {tally.last_loss} at step {step + 1}; lower lr or check the data",
                                 where=f"{run.recipe.path} stages[{run.idx}].lr")
        tally.tokens += int(acc[1])
        tally.tokens_run += int(acc[1])
        tally.loss_tokens += int(acc[2])
        tally.flops_run += float(acc[3])
        speed = throughput(run, tally)
        extra = run.metrics("train") if run.metrics is not None else {}
        rec = {"kind": "train", "stage": stage.name, "step": step + 1, "epoch": round(run.sched.epoch_of(step + 1), 4),
               "loss": tally.last_loss, "lr": lr, "grad_norm": grad_norm, "tokens": int(acc[1]),
               "loss_tokens": int(acc[2]), **extra, **speed}
        if (step + 1) % stage.log_every_steps == 0 or step + 1 == total:
            log.write(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{tally.last_loss:.3f}", tok_s=f"{speed['tokens_per_s']:.0f}",
                        **({"mfu": f"{speed['mfu']:.1%}"} if "mfu" in speed else {}))
        if stage.save_every_steps and (step + 1) % stage.save_every_steps == 0 and step + 1 < total:
            save_checkpoint(run.accelerator, run.ckpt_root, step + 1, run.state(step + 1), keep=stage.keep_checkpoints)
