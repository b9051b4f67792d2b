"""Exact resume: SIGKILL mid-stage or mid-checkpoint, a full disk; the result equals an uninterrupted run."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import write_recipe, write_shards

from bloomchat.errors import BloomchatError
from bloomchat.train import run_recipe
from bloomchat.train.report import LOSS_KEYS, read_metrics


def _recipe(model_dir, shards1, shards2, out: Path) -> dict:
    return {"name": "resume", "base_model": str(model_dir), "output_dir": str(out), "seed": 5,
            "defaults": {"global_batch_size": 4, "micro_batch_size": 2, "lr": 3e-3, "save_every_steps": 2,
                         "keep_checkpoints": 2},
            "stages": [{"name": "one", "epochs": 1, "data": {"shards": str(shards1)}},
                       {"name": "two", "epochs": 2, "data": {"shards": str(shards2)}}]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, micro_model_dir, tiny_tokenizer):
    root = tmp_path_factory.mktemp("resume")
    s1 = write_shards(root / "s1", tiny_tokenizer, n_rows=16, seed=1)  # 4 steps
    s2 = write_shards(root / "s2", tiny_tokenizer, n_rows=12, seed=2)  # 3 steps an epoch x 2 epochs
    ref = run_recipe(write_recipe(root / "ref.yaml", _recipe(micro_model_dir, s1, s2, root / "ref")), progress=False)
    return {"root": root, "model": micro_model_dir, "s1": s1, "s2": s2, "ref": ref}


def _same_as_reference(res: dict, ref: dict) -> None:
    from safetensors.torch import load_file

    for a, b in zip(res["stages"], ref["stages"]):
        la = [{k: r.get(k) for k in LOSS_KEYS} for r in read_metrics(Path(a["metrics"]))]
        lb = [{k: r.get(k) for k in LOSS_KEYS} for r in read_metrics(Path(b["metrics"]))]
        assert [r["step"] for r in la] == [r["step"] for r in lb]  # no step lost, none repeated
        for x, y in zip(la, lb):
            assert x["tokens"] == y["tokens"] and x["loss_tokens"] == y["loss_tokens"]  # same data, same order
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-6, abs=1e-7)
        wa = load_file(str(Path(a["model_dir"]) / "model.safetensors"))
        wb = load_file(str(Path(b["model_dir"]) / "model.safetensors"))
        for k in wb:
            torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-6)


_KILL_AT_STEP = """
import os, signal, sys
from bloomchat.train import report, run_recipe
orig = report.MetricsLog.write
def write(self, rec):
    orig(self, rec)
    if rec.get("stage") == sys.argv[2] and rec.get("step") == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
report.MetricsLog.write = write
run_recipe(sys.argv[1], progress=False)
"""

_KILL_IN_CHECKPOINT = """
import os, signal, sys
from pathlib import Path
import accelerate
orig = accelerate.Accelerator.save_state
calls = []
def save_state(self, output_dir=None, **kw):
    calls.append(output_dir)
    if len(calls) == int(sys.argv[2]):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"half written")
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(self, output_dir, **kw)
accelerate.Accelerator.save_state = save_state
from bloomchat.train import run_recipe
run_recipe(sys.argv[1], progress=False)
"""


def _run_killed(script: str, *args) -> None:
    p = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr[-2000:]


def test_sigkill_mid_stage_then_resume_equals_uninterrupted(setup, tmp_path):
    r = write_recipe(tmp_path / "r.yaml", _recipe(setup["model"], setup["s1"], setup["s2"], tmp_path / "out"))
    _run_killed(_KILL_AT_STEP, r, "two", 3)  # checkpoint at step 2; step 3 logged, then killed
    two = tmp_path / "out" / "two"
    assert (two / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert [x["step"] for x in read_metrics(two / "metrics.jsonl")] == [1, 2, 3]
    assert not (two / "model").exists()
    with pytest.raises(BloomchatError, match="--resume"):
        run_recipe(r, progress=False)  # a fresh start over a half-done run is refused
    res = run_recipe(r, resume=True, progress=False)
    _same_as_reference(res, setup["ref"])


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(setup, tmp_path):
    r = write_recipe(tmp_path / "r.yaml", _recipe(setup["model"], setup["s1"], setup["s2"], tmp_path / "out"))
    _run_killed(_KILL_IN_CHECKPOINT, r, 2)  # stage one: checkpoint at step 2 done, killed inside step 4's
    ck = tmp_path / "out" / "one" / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step-00000002"
    assert list(ck.glob(".tmp-step-*"))  # the half-written one is there, but not 'latest'
    res = run_recipe(r, resume=True, progress=False)
    assert not list(ck.glob(".tmp-*"))
    _same_as_reference(res, setup["ref"])


def test_full_disk_while_checkpointing(setup, tmp_path, monkeypatch):
    import accelerate

    r = write_recipe(tmp_path / "r.yaml", _recipe(setup["model"], setup["s1"], setup["s2"], tmp_path / "out"))
    orig = accelerate.Accelerator.save_state
    calls = []

    def full_disk(self, output_dir=None, **kw):
        calls.append(output_dir)
        if len(calls) == 2:
            orig(self, output_dir, **kw)
            raise OSError(errno.ENOSPC, "No space left on device")
        return orig(self, output_dir, **kw)

    monkeypatch.setattr(accelerate.Accelerator, "save_state", full_disk)
    with pytest.raises(BloomchatError, match="no space left on device.*still step-00000002"):
        run_recipe(r, progress=False)
    ck = tmp_path / "out" / "one" / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step-00000002"
    assert not list(ck.glob(".tmp-*"))  # the partial checkpoint was removed
    monkeypatch.setattr(accelerate.Accelerator, "save_state", orig)
    _same_as_reference(run_recipe(r, resume=True, progress=False), setup["ref"])
