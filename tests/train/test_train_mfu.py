"""Model FLOPs: the formula against hand arithmetic, the published bloom-560m size and torch's
FLOP counter; MFU against the device table."""

from __future__ import annotations

import pytest
import torch

from bloomchat.train.mfu import (
    ModelShape,
    attended_keys,
    batch_flops,
    cpu_peak_tflops,
    flops_per_token,
    mfu,
    peak_tflops,
    segment_lengths,
)


def _bloom_config(preset, vocab):
    from transformers import BloomConfig

    from bloomchat.models.presets import SIZE_PRESETS

    return BloomConfig(vocab_size=vocab, **SIZE_PRESETS[preset])


def test_bloom_560m_by_hand():
    shape = ModelShape.from_config(_bloom_config("bloom-560m", 250880))
    # V h + 2h + 24 (12 h^2 + 13 h) + 2h, h = 1024: bigscience/bloom-560m's published size
    assert shape.n_params == 256_901_120 + 2_048 + 24 * 12_596_224 + 2_048 == 559_214_592
    # one 2048-token conversation: 6 N + 12 * 24 * 1024 * (2049 / 2)
    assert flops_per_token(shape, 2048) == 3_355_287_552 + 302_137_344
    # PaLM's convention (every query sees all 2048 keys): twice the attention term, less 12 L h / 2
    assert flops_per_token(shape, 2048, causal=False) == 3_355_287_552 + 12 * 24 * 1024 * 2048
    # two conversations of 1024 attend to half the pairs of one of 2048 (k = 1025/2, not 2049/2)
    assert flops_per_token(shape, segment_lengths=[1024, 1024]) == 3_355_287_552 + 12 * 24 * 1024 * 512.5
    # the LM head only on a quarter of the tokens: 6 V h x 3/4 fewer
    assert flops_per_token(shape, 2048, head_fraction=0.25) == 3_657_424_896 - 6 * 256_901_120 * 0.75


def test_shape_from_a_model_matches_the_config_count():
    from transformers import BloomForCausalLM

    cfg = _bloom_config("bloom-560m", 250880)
    with torch.device("meta"):
        model = BloomForCausalLM(cfg)  # no memory: parameters on the meta device
    assert ModelShape.from_model(model) == ModelShape.from_config(cfg)


def test_training_flops_match_torch_flop_counter():
    """torch's FlopCounterMode counts every matmul of forward + backward; the eager kernel computes
    the whole L x L score matrix, i.e. PaLM's convention (causal=False). Biases and LayerNorms are
    not matmuls, so the counter is compared with N = the matmul weights."""
    from torch.utils.flop_counter import FlopCounterMode

    from bloomchat.models import build_bloom

    m = build_bloom("micro", vocab_size=300, seed=0)
    c = m.config
    h, n_layer, t = c.hidden_size, c.n_layer, 40
    matmul = ModelShape(n_layer, h, c.vocab_size, n_params=c.vocab_size * h + n_layer * 12 * h * h)
    ids = torch.randint(4, 300, (1, t))
    with FlopCounterMode(display=False) as counter:
        m(input_ids=ids).logits.sum().backward()
    assert counter.get_total_flops() == flops_per_token(matmul, t, causal=False) * t


def test_segments_and_batch_flops():
    seg = torch.tensor([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
    assert segment_lengths(seg) == [3, 2, 4]
    assert attended_keys(segment_lengths=[3, 2, 4]) == (6 + 3 + 10) / 9
    shape = ModelShape(n_layer=2, hidden=8, vocab=10, n_params=1000)
    # 9 real tokens; head on 3 of them: 6 * (1000 - 80) * 9 + 6 * 80 * 3 + 12 * 2 * 8 * (6 + 3 + 10)
    assert batch_flops(shape, seg, head_tokens=3) == pytest.approx(6 * 920 * 9 + 6 * 80 * 3 + 12 * 2 * 8 * 19)


def test_peak_table_and_mfu():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H200") == 989.0 and peak_tflops("NVIDIA H200 NVL") == 835.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", dtype="fp32") is None and peak_tflops("Tesla T4") is None
    assert cpu_peak_tflops(2, 3.0) == pytest.approx(0.192)
    # bloom-560m at 2048 tokens, 100k tokens/s on an H200: 3.657e9 * 1e5 / 989e12 = 37.0 %
    assert mfu(100_000, 3_657_424_896, 989.0) == pytest.approx(0.36981, abs=1e-5)
    assert mfu(100_000, 3_657_424_896, None) is None


def _expected_flops(shards, config) -> float:
    """Model FLOPs of one epoch over the shards, from the parquet rows and the BLOOM parameter
    formula alone: 6 x body weights x tokens + 6 x head x head positions (predicted loss tokens,
    prompt_loss_weight 0) + 12 x layers x hidden x sum s(s+1)/2 over conversations."""
    import numpy as np
    import pyarrow.parquet as pq

    shape = ModelShape.from_config(config)
    head = shape.vocab * shape.hidden
    total = 0.0
    for row in pq.read_table(shards / "train" / "train-00000.parquet").to_pylist():
        seg, loss = np.array(row["segment_ids"]), np.array(row["loss_mask"], bool)
        h = int((loss[1:] & (seg[1:] == seg[:-1])).sum())
        s = np.bincount(seg)[1:]
        s = s[s > 0].astype(np.float64)
        total += 6 * (shape.n_params - head) * len(seg) + 6 * head * h + 12 * shape.n_layer * shape.hidden * (
            s * (s + 1) / 2).sum()
    return total


def test_training_metrics_carry_mfu(tmp_path, micro_model_dir, tiny_tokenizer, monkeypatch, capsys):
    """With a peak given ($BLOOMCHAT_PEAK_TFLOPS): every training record has model TFLOP/s and MFU,
    the progress line shows MFU, and the stage's model FLOPs equal the count made from the shards."""
    from transformers import AutoConfig
    from train_helpers import write_recipe, write_shards

    from bloomchat.train import run_recipe
    from bloomchat.train.report import read_metrics

    shards = write_shards(tmp_path / "shards", tiny_tokenizer, n_rows=8, seed=6)

    def recipe(out):  # 8 rows, 4 a step: 2 steps, every row once, no idle micro-batch
        return write_recipe(tmp_path / f"{out}.yaml", {
            "name": "mfu", "base_model": str(micro_model_dir), "output_dir": str(tmp_path / out), "seed": 1,
            "defaults": {"global_batch_size": 4, "micro_batch_size": 2, "lr": 1e-3},
            "stages": [{"name": "s", "epochs": 1, "data": {"shards": str(shards)}}]})

    monkeypatch.setenv("BLOOMCHAT_PEAK_TFLOPS", "0.25")
    res = run_recipe(recipe("peak"), progress=True)["stages"][0]
    err = capsys.readouterr().err
    assert "mfu=" in err and "MFU not shown" not in err
    recs = [r for r in read_metrics(tmp_path / "peak" / "s" / "metrics.jsonl") if r["kind"] == "train"]
    assert len(recs) == 2
    for r in recs:
        assert r["tflops"] > 0 and r["mfu"] == pytest.approx(r["tflops"] / 0.25, rel=2e-3)
    assert res["peak_tflops"] == 0.25 and res["peak_source"] == "$BLOOMCHAT_PEAK_TFLOPS"
    assert res["model_flops"] == pytest.approx(_expected_flops(shards, AutoConfig.from_pretrained(micro_model_dir)),
                                               rel=1e-9)
    # no peak known (a CPU, nothing given): no MFU anywhere, and the reason said once
    monkeypatch.delenv("BLOOMCHAT_PEAK_TFLOPS")
    res = run_recipe(recipe("nopeak"), progress=True)["stages"][0]
    err = capsys.readouterr().err
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: its peak comes from the table")
    assert err.count("MFU not shown: no peak FLOP/s known for a cpu device; set $BLOOMCHAT_PEAK_TFLOPS") == 1
    assert "mfu=" not in err and "mfu" not in res and res["peak_tflops"] is None
    recs = [r for r in read_metrics(tmp_path / "nopeak" / "s" / "metrics.jsonl") if r["kind"] == "train"]
    assert all("mfu" not in r and r["tflops"] > 0 for r in recs)
    assert res["model_flops"] == pytest.approx(_expected_flops(shards, AutoConfig.from_pretrained(micro_model_dir)),
                                               rel=1e-9)


def test_peak_from_the_environment_is_checked(monkeypatch):
    from bloomchat.errors import BloomchatError
    from bloomchat.train.mfu import device_peak

    monkeypatch.setenv("BLOOMCHAT_PEAK_TFLOPS", "fast")
    with pytest.raises(BloomchatError, match="BLOOMCHAT_PEAK_TFLOPS: expects one device's peak TFLOP/s"):
        device_peak(torch.device("cpu"), "fp32")
    monkeypatch.setenv("BLOOMCHAT_PEAK_TFLOPS", "-1")
    with pytest.raises(BloomchatError):
        device_peak(torch.device("cpu"), "fp32")
    monkeypatch.setenv("BLOOMCHAT_PEAK_TFLOPS", "0.192")
    assert device_peak(torch.device("cpu"), "fp32") == (0.192, "$BLOOMCHAT_PEAK_TFLOPS")
