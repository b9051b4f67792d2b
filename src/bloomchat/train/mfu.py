"""Model FLOPs utilisation: how close a training run is to the hardware's peak.

MFU = (model FLOPs per token x tokens per second) / peak FLOP/s of the device (PaLM, Chowdhery
et al. 2022, appendix B). Model FLOPs are what the maths of one training step needs, whatever the
implementation does (recomputation in backward, masked tiles, padding do not count).

FLOPs of one token, forward + backward (backward = 2x forward, so 3 x 2 FLOPs per weight):

    6 * N_body                         every weight outside the vocabulary projection
  + 6 * V * h * head_fraction          the LM head (V x h), on the positions whose logits are
                                       computed: bloomchat computes them only where a loss is
                                       taken, so head_fraction = loss tokens / tokens
  + 12 * n_layer * h * k               attention: per layer and query, q.k^T and p.v are
                                       2 * h * k FLOPs each (k = keys attended), x 3 for backward

k is the mean number of keys a token attends to. PaLM's 12 * n_layer * h * T takes k = T (every
query sees the whole row). A causal row sees on average (T + 1) / 2 keys, and packed conversations
see only their own: a conversation of s tokens attends to s (s + 1) / 2 pairs, so
k = sum_i s_i (s_i + 1) / 2 / sum_i s_i over the row's conversations (padding excluded).

N: BLOOM has V h (word embeddings, tied with the LM head, counted once as the head) + 2 h (the
embedding LayerNorm) + n_layer (12 h^2 + 13 h) + 2 h (final LayerNorm), where 12 h^2 = fused q/k/v
3 h^2 + attention output h^2 + MLP 4 h^2 + 4 h^2 and 13 h = their biases 3h + h + 4h + h plus two
LayerNorms 4 h. bloom-560m (h 1024, 24 layers, V 250880): 256,901,120 + 2,048 + 24 x 12,596,224
+ 2,048 = 559,214,592, the published parameter count. Worked example, bloom-560m, one 2048-token
conversation, head everywhere: 6 x 559,214,592 = 3,355,287,552 plus 12 x 24 x 1024 x 1024.5 =
302,137,344 -> 3,657,424,896 FLOPs per token (tests/train/test_train_mfu.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

#: Dense (no 2:4 sparsity) bf16 tensor-core peak, TFLOP/s, from NVIDIA's datasheets (the
#: datasheets print the sparse figure, 2x these, with an asterisk). Most specific name first:
#: matched as a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0),   # H200 datasheet (nvidia.com/en-us/data-center/h200): 1,671 sparse / 2
    ("H200", 989.0),       # H200 SXM: 1,979 sparse / 2 (same tensor cores as H100 SXM)
    ("H100 NVL", 835.0),   # H100 datasheet (nvidia.com/en-us/data-center/h100): 1,671 sparse / 2
    ("H100 PCIe", 756.0),  # H100 PCIe: 1,513 sparse / 2
    ("H100", 989.0),       # H100 SXM ("NVIDIA H100 80GB HBM3"): 1,979 sparse / 2
    ("A100", 312.0),       # A100 datasheet: 312 dense bf16 (SXM and PCIe alike)
    ("L40S", 362.0),       # L40S datasheet: 733 sparse / 2 (362.05)
    ("L4", 121.0),         # L4 datasheet: 242 sparse / 2
    ("A10", 125.0),        # A10 datasheet: 125 dense bf16 (A10G differs: not listed, use the flag)
)

#: A CPU estimate for `--peak-tflops` when nothing better is known: cores x clock x FLOPs per
#: cycle. Two 256-bit FMA pipes x 8 fp32 lanes x 2 FLOPs = 32 fp32 FLOPs per cycle and core
#: (AVX2 Intel since Haswell; AMD Zen 2-4 also run AVX-512 as 2 x 256 bit).
CPU_FP32_FLOPS_PER_CYCLE = 32


def cpu_peak_tflops(cores: int, ghz: float, flops_per_cycle: int = CPU_FP32_FLOPS_PER_CYCLE) -> float:
    """e.g. 2 cores x 3.0 GHz x 32 = 0.192 TFLOP/s fp32."""
    return cores * ghz * flops_per_cycle / 1e3


def peak_tflops(device_name: str, dtype: str = "bf16") -> float | None:
    """The table's dense bf16 peak for a CUDA device name, or None (unknown device, or a dtype the
    table does not hold: give `--peak-tflops` then)."""
    if dtype != "bf16":
        return None
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


#: Environment variable giving one training device's peak TFLOP/s (for a CPU, or a GPU the table
#: lacks); the trainer reports MFU only when a peak is known.
PEAK_ENV = "BLOOMCHAT_PEAK_TFLOPS"


def device_peak(device, precision: str) -> tuple[float | None, str]:
    """(peak TFLOP/s of one device or None, where the figure comes from or why there is none):
    $BLOOMCHAT_PEAK_TFLOPS, else the table for a CUDA device, else None (CPU: a guess of
    cores x clock would make an MFU look measured when it is not)."""
    from bloomchat.errors import BloomchatError

    text = os.environ.get(PEAK_ENV, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0:
            raise BloomchatError(f"expects one device's peak TFLOP/s, a positive number; got {text!r}", where=PEAK_ENV)
        return value, f"${PEAK_ENV}"
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
        p = peak_tflops(name, precision)
        if p:
            return p, f"{name}, dense {precision} (table)"
        return None, f"no dense {precision} peak for {name} in bloomchat.train.mfu's table; set ${PEAK_ENV}"
    return None, (f"no peak FLOP/s known for a {getattr(device, 'type', device)} device; set ${PEAK_ENV} "
                  f"(a CPU: cores x GHz x {CPU_FP32_FLOPS_PER_CYCLE} / 1000)")


@dataclass(frozen=True)
class ModelShape:
    n_layer: int
    hidden: int
    vocab: int
    n_params: int  # parameters that do work per token (tied embeddings counted once, as the head)

    @classmethod
    def from_config(cls, config, n_params: int | None = None) -> ModelShape:
        n_layer = getattr(config, "n_layer", None) or config.num_hidden_layers
        h, v = config.hidden_size, config.vocab_size
        if n_params is None:
            if config.model_type != "bloom":
                raise ValueError("n_params is needed for a non-BLOOM config (ModelShape.from_model counts it)")
            n_params = v * h + 2 * h + n_layer * (12 * h * h + 13 * h) + 2 * h
        return cls(n_layer, h, v, n_params)

    @classmethod
    def from_model(cls, model) -> ModelShape:
        """Counts the model's unique parameters; an untied input embedding is a lookup, not a
        matmul, so it is left out."""
        numel = lambda p: getattr(p, "ds_numel", None) or p.numel()  # noqa: E731  (ZeRO-3 keeps the full count there)
        n = sum(numel(p) for p in {id(p): p for p in model.parameters()}.values())
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        if head is not None and emb.weight is not head.weight:
            n -= numel(emb.weight)
        return cls.from_config(model.config, n_params=n)


def segment_lengths(segment_ids) -> list[int]:
    """Lengths of the conversations of a (B, L) or (L,) array of segment ids (0 = padding)."""
    seg = np.asarray(segment_ids.cpu() if hasattr(segment_ids, "cpu") else segment_ids)
    seg = seg.reshape(-1, seg.shape[-1])
    out = []
    for row in seg:
        edges = np.flatnonzero(np.diff(row)) + 1
        for run in np.split(row, edges):
            if len(run) and run[0] != 0:
                out.append(len(run))
    return out


def attended_keys(seq_len: int | None = None, segment_lengths: list[int] | None = None, causal: bool = True) -> float:
    """Mean keys per token: (T + 1) / 2 for one causal row, sum s(s+1)/2 / sum s for packed ones,
    T with causal=False (PaLM's convention, also what a kernel computing the whole masked L x L
    score matrix does)."""
    if not causal:
        if seq_len is None:
            raise ValueError("give seq_len")
        return float(seq_len)
    if segment_lengths:
        s = np.asarray(segment_lengths, dtype=np.float64)
        return float((s * (s + 1) / 2).sum() / s.sum())
    if seq_len is None:
        raise ValueError("give seq_len or segment_lengths")
    return (seq_len + 1) / 2


def flops_per_token(shape: ModelShape, seq_len: int | None = None, *, segment_lengths: list[int] | None = None,
                    head_fraction: float = 1.0, causal: bool = True) -> float:
    """Training FLOPs (forward + backward) per token; see the module docstring for the formula."""
    head = shape.vocab * shape.hidden
    body = shape.n_params - head
    attn = 12 * shape.n_layer * shape.hidden * attended_keys(seq_len, segment_lengths, causal)
    return 6 * body + 6 * head * head_fraction + attn


def batch_flops(shape: ModelShape, segment_ids, head_tokens: int | None = None) -> float:
    """Model FLOPs of one micro-batch of packed rows: the trainer sums these over a logging window.
    head_tokens: positions whose logits are computed (bloomchat: the loss tokens); all tokens if None."""
    lengths = segment_lengths(segment_ids)
    tokens = sum(lengths)
    if tokens == 0:
        return 0.0
    frac = 1.0 if head_tokens is None else head_tokens / tokens
    return flops_per_token(shape, segment_lengths=lengths, head_fraction=frac) * tokens


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float | None) -> float | None:
    """Fraction of the peak used (None when the peak is unknown)."""
    if not peak_tflops:
        return None
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12)
