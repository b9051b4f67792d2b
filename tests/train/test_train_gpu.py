"""Training on a CUDA GPU: bf16 mixed precision, packed attention in bf16, DeepSpeed ZeRO-3.

Skipped without a CUDA GPU (CI has none); bench/gpu_check.sh runs them where one is lent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import write_recipe, write_shards

from bloomchat.train import run_recipe
from bloomchat.train.report import read_metrics

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _recipe(model_dir, shards, out, precision):
    return {"name": "gpu", "base_model": str(model_dir), "output_dir": str(out), "seed": 9, "precision": precision,
            "defaults": {"global_batch_size": 4, "micro_batch_size": 2, "lr": 3e-3, "save_every_steps": 0},
            "stages": [{"name": "s", "epochs": 2, "data": {"shards": str(shards)}}]}


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "s" / "metrics.jsonl") if r.get("kind", "train") == "train"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_tokenizer):
    return write_shards(tmp_path_factory.mktemp("gpu_shards"), tiny_tokenizer, n_rows=16, seed=4, dev_rows=4)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, micro_model_dir, shards):
    tmp = tmp_path_factory.mktemp("gpu_bf16")
    torch.cuda.reset_peak_memory_stats()
    res = run_recipe(write_recipe(tmp / "r.yaml", _recipe(micro_model_dir, shards, tmp / "out", "bf16")),
                     progress=False)
    return tmp / "out", res, torch.cuda.max_memory_allocated()


def test_gpu_bf16_training_runs_on_the_gpu_and_follows_fp32(bf16_run, tmp_path, micro_model_dir, shards):
    out, res, peak = bf16_run
    assert peak > 0  # the model and batches really lived on the GPU
    bf16 = _losses(out)
    fp32_res = run_recipe(write_recipe(tmp_path / "r.yaml", _recipe(micro_model_dir, shards, tmp_path / "o", "fp32")),
                          progress=False)
    fp32 = _losses(tmp_path / "o")
    assert len(bf16) == len(fp32) == 8
    assert bf16[-1] < bf16[0]
    for a, b in zip(bf16, fp32):  # autocast keeps fp32 master weights: the curves stay together
        assert a == pytest.approx(b, rel=2e-2)
    from bloomchat.models import load_model

    m = load_model(res["final_model_dir"])  # exported in HF layout, loads on the CPU
    assert m.get_input_embeddings().weight.dtype == torch.float32
    assert fp32_res["final_model_dir"] != res["final_model_dir"]


def test_gpu_packed_attention_in_bf16_keeps_conversations_apart(micro_model_dir):
    from bloomchat.models import load_model
    from bloomchat.train.packing_attn import install_packed_attention, packed_forward

    m = load_model(micro_model_dir, dtype="bf16", device="cuda").eval()
    install_packed_attention(m)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(5, 500, (700,), generator=g), torch.randint(5, 500, (40,), generator=g)
    ids = torch.cat([a, b])[None].cuda()
    seg = torch.cat([torch.ones(700, dtype=torch.long), torch.full((40,), 2)])[None].cuda()
    with torch.no_grad():
        packed = packed_forward(m, ids, seg)[0, 700:].float()
        alone = m(input_ids=b[None].cuda()).logits[0].float()
        leaked = m(input_ids=ids).logits[0, 700:].float()
    # bf16 logits of a random micro model differ by a few units in the last place at most when the
    # conversations are kept apart; letting them attend to each other moves every logit
    assert (packed - alone).abs().max() < 0.02
    assert (leaked - alone).abs().mean() > 5 * (packed - alone).abs().mean()


REPO = Path(__file__).resolve().parents[2]


def _zero3_one_gpu() -> dict:
    """The shipped ZeRO-3 config (16 nodes x 8 GPUs) cut down to this one GPU."""
    cfg = yaml.safe_load((REPO / "recipes" / "accelerate" / "deepspeed_zero3.yaml").read_text(encoding="utf-8"))
    cfg.update(num_machines=1, num_processes=1)
    for k in ("main_process_ip", "main_process_port"):
        cfg.pop(k, None)
    return cfg


def test_gpu_deepspeed_zero3_trains_and_exports_whole_weights(tmp_path, micro_model_dir, shards, bf16_run):
    pytest.importorskip("deepspeed")
    cfg = tmp_path / "zero3.yaml"
    cfg.write_text(yaml.safe_dump(_zero3_one_gpu()), encoding="utf-8")
    rec = write_recipe(tmp_path / "r.yaml", _recipe(micro_model_dir, shards, tmp_path / "ds", "bf16"))
    env = {**os.environ, "ACCELERATE_DISABLE_RICH": "1", "MASTER_PORT": "29617"}
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg),
                        "-m", "bloomchat.train", str(rec)], capture_output=True, text=True, timeout=600, env=env,
                       cwd=tmp_path)
    if p.returncode:
        print(p.stdout[-3000:], p.stderr[-12000:])  # shown by pytest under "Captured stdout"
    assert p.returncode == 0
    ds = _losses(tmp_path / "ds")
    ref = _losses(bf16_run[0])
    assert len(ds) == len(ref) == 8
    assert ds[0] == pytest.approx(ref[0], rel=2e-2)  # same weights, same first batch
    assert ds[-1] < ds[0]
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "ds" / "s" / "model" / "model.safetensors"))
    want = load_file(str(Path(micro_model_dir) / "model.safetensors"))
    assert set(got) == set(want)
    for k in want:  # ZeRO-3 gathered every shard: full shapes, and training moved the weights
        assert got[k].shape == want[k].shape, k
    assert any(not torch.equal(got[k].float(), want[k].float()) for k in want)
    assert json.loads((tmp_path / "ds" / "s" / "result.json").read_text())["processes"] == 1
