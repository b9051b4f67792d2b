"""The same recipe under `accelerate launch` with 2 CPU processes (gloo) gives the 1-process curve."""

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


_FSDP_CPU = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: BloomBlock
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_cpu_ram_efficient_loading: false
  fsdp_offload_params: false
  fsdp_activation_checkpointing: false
mixed_precision: "no"
machine_rank: 0
main_training_function: main
num_machines: 1
num_processes: 2
main_process_port: 0
rdzv_backend: static
same_network: true
use_cpu: true
"""

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


@pytest.mark.slow
def test_fsdp_two_processes_uneven_dev_split_kill_and_resume(tmp_path, micro_model_dir, tiny_tokenizer):
    """FSDP2 on 2 CPU processes (gloo): 3 dev rows over 2 ranks (one rank has a zero-weight row in
    the second dev micro-batch, so both run the same forwards), killed after step 3, resumed
    from the sharded checkpoint of step 2; losses and exported weights equal the 1-process run."""
    shards = write_shards(tmp_path / "shards", tiny_tokenizer, n_rows=12, seed=5, dev_rows=3)

    def recipe(out):
        return {"name": "fsdp", "base_model": str(micro_model_dir), "output_dir": str(tmp_path / out), "seed": 9,
                "defaults": {"global_batch_size": 4, "micro_batch_size": 1, "lr": 3e-3, "save_every_steps": 2},
                "stages": [{"name": "s", "epochs": 2, "data": {"shards": str(shards)}}]}

    one = run_recipe(write_recipe(tmp_path / "one.yaml", recipe("one")), progress=False)
    two_yaml = write_recipe(tmp_path / "two.yaml", recipe("two"))
    cfg = tmp_path / "fsdp_cpu.yaml"
    cfg.write_text(_FSDP_CPU)
    script = tmp_path / "kill.py"
    script.write_text(_KILL_AT_STEP)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_DISABLE_RICH": "1", "KILL_AT_STEP": "3"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg)]
    p = subprocess.run([*launch, str(script), str(two_yaml)], capture_output=True, text=True, timeout=400, env=env,
                       cwd=tmp_path)
    assert p.returncode != 0
    ck = tmp_path / "two" / "s" / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step-00000002", p.stderr[-3000:]
    assert not (tmp_path / "two" / "s" / "model").exists()
    p = subprocess.run([*launch, "-m", "bloomchat.train", str(two_yaml), "--resume"], capture_output=True, text=True,
                       timeout=400, env={**env, "KILL_AT_STEP": "0"}, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "s" / "result.json").read_text())["processes"] == 2
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
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=2e-5, rtol=1e-4)
