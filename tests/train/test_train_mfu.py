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
