"""Atomic checkpoints: a crash, a SIGKILL or a full disk never leaves a half-written one as latest.

    STAGE/checkpoints/step-00000050/   model, optimizer, RNG states (accelerate.save_state) +
                                       trainer_state.json (step, stage, loss-log length)
    STAGE/checkpoints/latest           the name of the newest complete checkpoint

Order of writes: everything into `.tmp-step-N/`, fsync, rename to `step-N/` (atomic on one
filesystem), then `latest` is replaced atomically (write `latest.tmp`, fsync, os.replace), and
only then are old checkpoints pruned. A reader trusts `latest` alone; stray `.tmp-*` folders of
an interrupted save are removed on the next save.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from bloomchat.errors import BloomchatError
from bloomchat.train.faults import cause, is_write_fault

LATEST = "latest"
STATE = "trainer_state.json"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint, or None. A `latest` naming a missing folder is an error."""
    pointer = ckpt_root / LATEST
    if not pointer.exists():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    path = ckpt_root / name
    if not name or not (path / STATE).exists():
        raise BloomchatError(f"'latest' names {name!r}, which is not a complete checkpoint", where=str(pointer))
    return path


def read_state(ckpt: Path) -> dict:
    return json.loads((ckpt / STATE).read_text(encoding="utf-8"))


def save_checkpoint(accelerator, ckpt_root: Path, step: int, state: dict, *, keep: int) -> Path:
    """Write checkpoint `step` atomically (all processes call this; the main one renames)."""
    name = f"step-{step:08d}"
    final = ckpt_root / name
    tmp = ckpt_root / f".tmp-{name}"
    main = accelerator.is_main_process
    try:
        if main:
            ckpt_root.mkdir(parents=True, exist_ok=True)
            for stale in ckpt_root.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()  # before the barrier: under FSDP every rank writes into it at once
        accelerator.wait_for_everyone()
        quiet = logging.getLogger("accelerate.utils.other")  # "Removed shared tensor lm_head" (tied, expected)
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            accelerator.save_state(str(tmp))
        finally:
            quiet.setLevel(level)
        accelerator.wait_for_everyone()
        if main:
            write_text_atomic(tmp / STATE, json.dumps(state, indent=1))
            for f in tmp.rglob("*"):  # FSDP writes its shards into subfolders
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            if final.exists():  # a re-run of the same step after a resume
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(ckpt_root)
            write_text_atomic(ckpt_root / LATEST, name + "\n")
            _prune(ckpt_root, keep)
    except Exception as e:  # torch.save reports a full disk as RuntimeError, safetensors as SafetensorError
        reason = cause(e, tmp) if is_write_fault(e) else None  # before the partial files are removed
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        if reason is None:
            raise
        prev = None
        try:
            prev = latest_checkpoint(ckpt_root)
        except BloomchatError:
            pass
        todo = "free space" if "space" in reason or "quota" in reason else "fix that"
        raise BloomchatError(
            f"could not write checkpoint {name} ({reason}); the latest complete checkpoint is still "
            f"{prev.name if prev else 'none'}; {todo} and rerun with --resume", where=str(ckpt_root)) from None
    accelerator.wait_for_everyone()
    return final


def _prune(ckpt_root: Path, keep: int) -> None:
    done = sorted(p for p in ckpt_root.glob("step-*") if (p / STATE).exists())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def trainable_only(accelerator, model) -> list:
    """Make checkpoints hold only the trainable parameters (a LoRA adapter) besides the optimizer
    and RNG states: the frozen base is reloaded from the stage's init source on resume, so
    writing it again at every checkpoint is waste (SmolLM2-135M: 557 MB of weights per
    checkpoint before, the adapter's few MB now). Returns the hook handles (remove at stage end).
    FSDP and DeepSpeed save through their own paths and keep whole checkpoints."""
    if accelerator.distributed_type.name in ("FSDP", "DEEPSPEED"):
        return []
    keep = {n for n, p in model.named_parameters() if p.requires_grad}

    def on_save(models, weights, output_dir):
        for i, w in enumerate(weights):
            weights[i] = {k: v for k, v in w.items() if k in keep}

    return [accelerator.register_save_state_pre_hook(on_save)]


def _saved_keys(ckpt: Path) -> set[str] | None:
    f = ckpt / "model.safetensors"
    if not f.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(f), "pt") as fh:
        return set(fh.keys())


def load_checkpoint(accelerator, ckpt: Path, *, trainable: set[str] | None = None) -> dict:
    """Restore model, optimizer and RNG states saved by save_checkpoint; returns trainer state.

    `trainable`: the checkpoint holds only these parameters (see trainable_only); the rest of the
    model is already in place, and every one of them must be in the file."""
    kw = {}
    if trainable is not None:
        saved = _saved_keys(ckpt)
        lost = sorted(trainable - saved) if saved is not None else []
        if lost:
            raise BloomchatError(f"checkpoint lacks {len(lost)} trainable parameter(s), e.g. {lost[0]}",
                                 where=str(ckpt))
        kw["strict"] = False
    try:
        accelerator.load_state(str(ckpt), **kw)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise BloomchatError(f"cannot restore checkpoint: {str(e).splitlines()[0]}", where=str(ckpt)) from None
    return read_state(ckpt)
