"""The same recipe under `accelerate launch` with 2 CPU processes (gloo), DDP or FSDP2, gives the
1-process curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import write_recipe, write_shards

from bloomchat.train import run_recipe
from bloomchat.train.report import read_metrics

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, micro_model_dir, tiny_tokenizer):
    # 14 rows: the last global batch of each epoch has 2 rows, so one micro-slot per step is
    # empty in the 1-process run and one process idles in the 2-process run (a zero-weight row).
    shards = write_shards(tmp_path / "shards", tiny_tokenizer, n_rows=14, seed=4, dev_rows=6)

    def recipe(out):
        return {"name": "ddp", "base_model": str(micro_model_dir), "output_dir": str(tmp_path / out), "seed": 9,
                "defaults": {"global_batch_size": 4, "micro_batch_size": 1, "lr": 3e-3, "save_every_steps": 3},
                "stages": [{"name": "s", "epochs": 2, "data": {"shards": str(shards)}}]}

    one = run_recipe(write_recipe(tmp_path / "one.yaml", recipe("one")), progress=False)
    two_yaml = write_recipe(tmp_path / "two.yaml", recipe("two"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_DISABLE_RICH": "1"}
    # exactly the user's command: the shipped config alone (it picks a free port itself)
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch",
                        "--config_file", str(REPO / "recipes/accelerate/cpu_2proc.yaml"),
                        "-m", "bloomchat.train", str(two_yaml)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    # two processes really trained together (not two, or one, independent runs)
    assert json.loads((tmp_path / "two" / "s" / "result.json").read_text())["processes"] == 2
    assert p.stdout.count("final model:") == 1  # the summary comes from the main process only
    a = read_metrics(Path(one["stages"][0]["metrics"]))
    b = read_metrics(tmp_path / "two" / "s" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) == 9  # 4 steps x 2 epochs + dev
    for x, y in zip(a, b):
        assert x.get("tokens") == y.get("tokens") and x.get("loss_tokens") == y.get("loss_tokens")
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4), (x, y)
    assert b[-1]["kind"] == "dev"
    from safetensors.torch import load_file

    wa = load_file(str(Path(one["final_model_dir"]) / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "s" / "model" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=2e-5, rtol=1e-4)


_KILL_AT_STEP = """
import os, signal, sys
from bloomchat.train import report
from bloomchat.train.cli import main
orig = report.MetricsLog.write
def write(self, rec):
    orig(self, rec)
    if rec.get("step") == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)  # every rank reaches this step, every rank dies
report.MetricsLog.write = write
sys.exit(main(sys.argv[1:]))
"""


class _FakeAccelerator:
    """One rank of an n-process run, as dev_loss sees it; `reduce` records instead of summing."""

    def __init__(self, rank: int, world: int):
        self.process_index, self.num_processes, self.device = rank, world, torch.device("cpu")
        self.reduced = []

    def reduce(self, t, reduction):
        self.reduced.append(t.clone())
        return t


def test_dev_pass_gives_every_rank_the_same_forwards(micro_model_dir, tiny_tokenizer, tmp_path, monkeypatch):
    """FSDP / ZeRO-3 gather weights from every rank in every forward: 3 dev rows on 2 ranks must
    still be 2 forwards on each (a zero-weight row on rank 1), and the summed loss equals 1 rank's."""
    from transformers import AutoModelForCausalLM

    from bloomchat.train import loop
    from bloomchat.train.data import PackedSplit

    shards = write_shards(tmp_path / "shards", tiny_tokenizer, n_rows=4, seed=5, dev_rows=3)
    dev = PackedSplit(shards, "dev", cache_dir=tmp_path / "cache")
    from bloomchat.train.packing_attn import install_packed_attention

    model = AutoModelForCausalLM.from_pretrained(micro_model_dir)
    install_packed_attention(model)
    calls = []
    real = loop.packed_forward
    monkeypatch.setattr(loop, "packed_forward", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(rank, world):
        acc = _FakeAccelerator(rank, world)
        calls.clear()
        loop.dev_loss(model, dev, micro=1, pad_id=0, plw=0.0, accelerator=acc)
        return len(calls), acc.reduced[0]

    (n0, t0), (n1, t1) = run(0, 2), run(1, 2)
    assert n0 == n1 == 2
    n, t = run(0, 1)
    assert n == 3
    torch.testing.assert_close(t0 + t1, t, rtol=1e-9, atol=1e-9)  # the padding row adds no loss, no weight


def _shard_chunks(ckpt: Path) -> dict[str, int]:
    """Chunks per tensor of a checkpoint's sharded model (torch.distributed.checkpoint metadata):
    under FSDP every rank writes its own DTensor shard of each parameter."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(ckpt / "pytorch_model_fsdp_0")).read_metadata()
    return {k: len(v.chunks) for k, v in meta.state_dict_metadata.items() if hasattr(v, "chunks")}


@pytest.mark.slow
def test_fsdp_two_processes_uneven_dev_split_kill_and_resume(tmp_path, micro_model_dir, tiny_tokenizer):
    """FSDP2 on 2 CPU processes (gloo) with the shipped recipes/accelerate/fsdp_cpu_2proc.yaml:
    3 dev rows over 2 ranks (rank 1 runs a zero-weight row in the second dev forward, as FSDP
    needs equal forwards), killed after step 3, resumed from the sharded checkpoint of step 2;
    losses and exported weights equal the 1-process run."""
    shards = write_shards(tmp_path / "shards", tiny_tokenizer, n_rows=12, seed=5, dev_rows=3)

    def recipe(out):
        return {"name": "kill", "base_model": str(micro_model_dir), "output_dir": str(tmp_path / out), "seed": 9,
                "defaults": {"global_batch_size": 4, "micro_batch_size": 1, "lr": 3e-3, "save_every_steps": 2},
                "stages": [{"name": "s", "epochs": 2, "data": {"shards": str(shards)}}]}

    one = run_recipe(write_recipe(tmp_path / "one.yaml", recipe("one")), progress=False)
    two_yaml = write_recipe(tmp_path / "two.yaml", recipe("two"))
    cfg = REPO / "recipes/accelerate/fsdp_cpu_2proc.yaml"
    script = tmp_path / "kill.py"
    script.write_text(_KILL_AT_STEP)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_DISABLE_RICH": "1", "KILL_AT_STEP": "3",
           "CUDA_VISIBLE_DEVICES": ""}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg)]
    p = subprocess.run([*launch, str(script), str(two_yaml)], capture_output=True, text=True, timeout=400, env=env,
                       cwd=tmp_path)
    assert p.returncode != 0
    ck = tmp_path / "two" / "s" / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step-00000002", p.stderr[-3000:]
    assert not (tmp_path / "two" / "s" / "model").exists()
    # the checkpoint is FSDP's: every parameter saved as 2 shards, one per rank
    chunks = _shard_chunks(ck / "step-00000002")
    assert chunks and set(chunks.values()) == {2}, chunks
    assert any(k.endswith("word_embeddings.weight") for k in chunks)
    p = subprocess.run([*launch, "-m", "bloomchat.train", str(two_yaml), "--resume"], capture_output=True, text=True,
                       timeout=400, env={**env, "KILL_AT_STEP": "0"}, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "two" / "s" / "result.json").read_text())
    assert res["processes"] == 2 and res["distributed_type"] == "FSDP"
    assert one["stages"][0]["distributed_type"] == "NO"
    a = read_metrics(Path(one["stages"][0]["metrics"]))
    b = read_metrics(tmp_path / "two" / "s" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6, 6]  # 3 steps x 2 epochs + dev
    assert b[-1]["kind"] == "dev"
    for x, y in zip(a, b):
        assert x.get("tokens") == y.get("tokens") and x.get("loss_tokens") == y.get("loss_tokens")
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4), (x, y)
    from safetensors.torch import load_file

    wa = load_file(str(Path(one["final_model_dir"]) / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "s" / "model" / "model.safetensors"))
    assert set(wa) == set(wb)  # tied lm_head not written a second time by the gathered export
    # the gathered export goes through bloomchat's save_pretrained too (context length, RoPE keys)
    cfg_a = json.loads((Path(one["final_model_dir"]) / "config.json").read_text())
    cfg_b = json.loads((tmp_path / "two" / "s" / "model" / "config.json").read_text())
    assert cfg_b == cfg_a and cfg_b["seq_length"] == 2048
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=2e-5, rtol=1e-4)


def test_fsdp_on_cpu_refuses_what_needs_a_gpu(monkeypatch):
    """The FSDP-on-CPU switch names the launcher setting that cannot work on CPU processes
    instead of failing inside torch; without ACCELERATE_USE_FSDP it leaves the run alone."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from bloomchat.errors import BloomchatError
    from bloomchat.train.accel import fsdp_on_cpu

    acc = SimpleNamespace(state=SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, mixed_precision="no"))
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert fsdp_on_cpu(acc) is False and acc.state.distributed_type == DistributedType.MULTI_CPU
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(BloomchatError, match="fsdp_version: 2"):
        fsdp_on_cpu(acc)
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    with pytest.raises(BloomchatError, match="fsdp_cpu_ram_efficient_loading"):
        fsdp_on_cpu(acc)
    assert acc.state.distributed_type == DistributedType.MULTI_CPU
