"""Keep packed conversations apart inside one row, and compute logits only where loss is taken.

What transformers 5.24 offers for BLOOM: only the eager attention in `BloomAttention.forward`
(`alibi.baddbmm(q, k)` + an additive mask + fp32 softmax); BLOOM declares no SDPA, FlashAttention
or flex-attention support, and it has no position ids, so restarting positions (what
`find_packed_sequence_indices` in masking_utils keys on for Llama-like models) separates nothing.
What does work with the stock model, unchanged:

* `BloomModel.forward` passes a ready 4D mask through `create_causal_mask` untouched, and the eager
  kernel adds it to the scores: we give a block-diagonal causal mask (0 / dtype-min) built from
  the pack's `segment_ids`.
* ALiBi adds `slope * key_position` to every score. Inside one query row a constant shift of all
  keys cancels in the softmax, so absolute positions would be *mathematically* fine; but the bias
  of a conversation starting at token 1500 is then ~750 in magnitude, and in bf16 (8 bits of
  mantissa) that rounds by several units -- the conversation would see a different bias than
  when run alone. We therefore replace the model's `build_alibi_tensor` (an overridable method)
  on the instance with one that reads each key's position *within its conversation* from the 4D
  mask (number of keys a token may see, minus one). Logits of a packed conversation then equal
  its logits alone, in fp32 to ~1e-5 (tests/train/test_train_packing_attn.py).

Kernel. The stock eager kernel materialises the fp32 scores and probabilities of every head and
keeps them for backward. `kernel="sdpa"` (the default) swaps `BloomAttention.forward` on the
instance for one that calls `torch.nn.functional.scaled_dot_product_attention` with the
ALiBi + block mask as a float `attn_mask`: same math, fused softmax, probabilities recomputed in
backward. Measured on this 2-core CPU, forward + backward of one attention layer (B 4, 10 heads,
d 64): 0.111 s -> 0.068 s at L 512, 1.65 s -> 1.04 s at L 2048 (bench/bench_train.py shows the
whole-model effect). Generation (a KV cache) and `output_attentions` keep the stock forward.
On GPU the best kernel is FlashAttention-2's `flash_attn_varlen_func(..., cu_seqlens,
causal=True, alibi_slopes=slopes)`: it takes conversation boundaries directly and never builds
the L x L mask; it is not installed here and BLOOM's module does not dispatch to it, so on GPU
bloomchat uses the SDPA path above (PyTorch picks its memory-efficient kernel for a float mask).

Other causal LMs (with position ids) get restarted position ids and no mask: transformers then
builds the packed block-diagonal mask itself for every attention implementation.
"""

from __future__ import annotations

import contextlib
import types

import torch


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its own conversation (0 at every conversation start)."""
    b, n = segment_ids.shape
    idx = torch.arange(n, device=segment_ids.device).expand(b, n)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start_idx


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, L, L) mask: token i sees token j iff j <= i and both are in the same
    conversation. Padding (segment 0) sees only itself, so no softmax row is empty."""
    n = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(n, n, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = same & causal & (segment_ids[:, :, None] > 0)
    allowed |= torch.eye(n, dtype=torch.bool, device=segment_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def alibi_slopes(num_heads: int, device) -> torch.Tensor:
    """BLOOM's per-head ALiBi slopes, read off transformers' own `build_alibi_tensor` (the bias at
    position 1 is the slope), so they follow whatever transformers computes in every version
    (5.17 inlines the formula; 5.24 has a private helper)."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    ones = torch.ones(1, 2, dtype=torch.long, device=device)
    return build_alibi_tensor(ones, num_heads, torch.float32)[:, 0, 1]


def _packed_alibi(self, attention_mask: torch.Tensor, num_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """ALiBi with positions counted from each conversation's start (see module docstring)."""
    if attention_mask.ndim != 4:
        return type(self).build_alibi_tensor(self, attention_mask, num_heads, dtype)
    b = attention_mask.shape[0]
    # keys visible to token j = its position within its conversation + 1 (padding: itself only)
    pos = (attention_mask[:, 0] == 0).sum(-1) - 1  # (B, L)
    slopes = alibi_slopes(num_heads, attention_mask.device)
    alibi = slopes[None, :, None].float() * pos[:, None, :].float()  # (B, H, L)
    return alibi.reshape(b * num_heads, 1, -1).to(dtype)


def _bloom_modules(model) -> list:
    from transformers.models.bloom.modeling_bloom import BloomModel

    return [m for m in model.modules() if isinstance(m, BloomModel)]


def is_bloom(model) -> bool:
    return bool(_bloom_modules(model))


def _sdpa_attention(self, hidden_states, residual, alibi, attention_mask, layer_past=None, use_cache=False,
                    output_attentions=False, **kwargs):
    """BloomAttention.forward through scaled_dot_product_attention (see module docstring)."""
    if layer_past is not None or output_attentions or (self.pretraining_tp > 1 and self.slow_but_exact):
        return type(self).forward(self, hidden_states, residual, alibi, attention_mask, layer_past=layer_past,
                                  use_cache=use_cache, output_attentions=output_attentions, **kwargs)
    from transformers.models.bloom.modeling_bloom import dropout_add

    b, n, _ = hidden_states.shape
    q, k, v = self._reshape(self.query_key_value(hidden_states))  # (B, H, L, d) each
    bias = alibi.view(b, self.num_heads, 1, -1).to(q.dtype)
    if attention_mask is not None:
        bias = bias + attention_mask.to(q.dtype)
    ctx = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, dropout_p=self.attention_dropout.p if self.training else 0.0,
        scale=self.inv_norm_factor)
    out = self.dense(ctx.transpose(1, 2).reshape(b, n, self.hidden_size))
    return dropout_add(out, residual, self.hidden_dropout, self.training), None


KERNELS = ("sdpa", "eager")


def install_packed_attention(model, kernel: str = "sdpa") -> None:
    """Make a BLOOM model read per-conversation ALiBi positions from a 4D mask (idempotent), and
    with kernel="sdpa" run its attention through SDPA. 2D masks (generation, evaluation) and
    cached decoding keep the stock behaviour."""
    from transformers.models.bloom.modeling_bloom import BloomAttention

    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; use one of {KERNELS}")
    for m in _bloom_modules(model):
        m.build_alibi_tensor = types.MethodType(_packed_alibi, m)
        for a in m.modules():
            if isinstance(a, BloomAttention):
                a.__dict__.pop("forward", None)
                if kernel == "sdpa":
                    a.forward = types.MethodType(_sdpa_attention, a)


def uninstall_packed_attention(model) -> None:
    from transformers.models.bloom.modeling_bloom import BloomAttention

    for m in _bloom_modules(model):
        m.__dict__.pop("build_alibi_tensor", None)
        for a in m.modules():
            if isinstance(a, BloomAttention):
                a.__dict__.pop("forward", None)


def _output_head(model):
    # DDP and DeepSpeed wrap the model (`.module`) and do not forward get_output_embeddings
    while not hasattr(model, "get_output_embeddings") and isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise TypeError(f"{type(model).__name__} has no output embeddings (lm_head)")
    return head


@contextlib.contextmanager
def only_positions(model, flat_index: torch.Tensor | None):
    """Within the block, the LM head sees only hidden states at `flat_index` (into B*L), so the
    vocabulary projection -- 250k wide for BLOOM, a large share of the compute -- runs only where
    a loss is taken. A forward pre-hook keeps the module tree, weight tying and state-dict names
    unchanged, and works under DDP/FSDP/DeepSpeed because the model's own forward is called."""
    if flat_index is None:
        yield
        return

    def pre_hook(_module, args):
        hidden = args[0]
        return (hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat_index),) + tuple(args[1:])

    handle = _output_head(model).register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


def packed_forward(model, input_ids: torch.Tensor, segment_ids: torch.Tensor,
                   flat_index: torch.Tensor | None = None, *, bloom: bool | None = None) -> torch.Tensor:
    """Logits of packed rows with no attention across conversations.

    `flat_index` (optional) selects positions of the flattened (B*L) sequence: the result is then
    (N, V) instead of (B, L, V)."""
    bloom = is_bloom(model) if bloom is None else bloom
    with only_positions(model, flat_index):
        if bloom:
            dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
            mask = block_causal_mask(segment_ids, dtype)
            out = model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        else:
            pos = segment_positions(segment_ids)
            out = model(input_ids=input_ids, position_ids=pos, use_cache=False)
    return out.logits
