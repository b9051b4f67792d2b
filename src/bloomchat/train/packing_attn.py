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

`kernel="flex"` runs the attention through FlexAttention (`torch.nn.attention.flex_attention`):
no L x L tensor reaches the model. The conversations' block-causal structure is a `BlockMask`
(which 128 x 128 tiles are empty, full or partial) built from `segment_ids`, and ALiBi is a
`score_mod`: `score + slope[h] * (kv - q)`. Inside one conversation kv - q equals the difference of
the positions within the conversation, and the softmax ignores the per-row constant, so this is
BLOOM's `slope * key_position` with positions restarted per conversation (the form FlashAttention's
`alibi_slopes` uses). Padding (segment 0) sees only itself, as for the other kernels, so no row is
empty and no NaN appears. On CUDA the call is `torch.compile`d into one fused kernel (forward and
backward). On CPU, torch 2.13 runs FlexAttention forward only (unfused, it materialises the scores)
and has no backward at all -- `flex_attention` refuses inputs that require grad, and a compiled
backward fails in inductor -- so training with `flex` needs a GPU; on CPU it raises a
BloomchatError pointing to `sdpa`. Attention dropout is not supported by flex (BLOOM's is 0.0).

Other causal LMs (with position ids) get restarted position ids and no mask: transformers then
builds the packed block-diagonal mask itself for every attention implementation.
"""

from __future__ import annotations

import contextlib
import types

import torch

from bloomchat.errors import BloomchatError


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
    if _is_block_mask(attention_mask):
        # the flex kernel adds ALiBi in its score_mod; BloomBlock only passes this tensor along
        return torch.zeros(1, dtype=dtype, device=attention_mask.kv_num_blocks.device)
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


def _is_block_mask(mask) -> bool:
    try:
        from torch.nn.attention.flex_attention import BlockMask
    except ImportError:  # torch without flex attention
        return False
    return isinstance(mask, BlockMask)


def flex_block_mask(segment_ids: torch.Tensor):
    """The BlockMask of `block_causal_mask`: token i sees token j iff j <= i in the same
    conversation; padding (segment 0) sees only itself. Only per-tile block indices are kept
    (B x L/128 x L/128 integers); `create_block_mask` evaluates the mask_mod once while building
    them (a transient B x L x L bool, 4 MiB per row at L 2048) and never again."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg = segment_ids.to(torch.int32)
    b, n = seg.shape

    def same_conversation_causal(b_, h_, q, kv):
        return ((seg[b_, q] == seg[b_, kv]) & (kv <= q) & (seg[b_, q] > 0)) | (q == kv)

    return create_block_mask(same_conversation_causal, b, None, n, n, device=seg.device)


_COMPILED_FLEX = {}
_CPU_REFERENCE_BACKWARD = [False]


@contextlib.contextmanager
def cpu_flex_reference_backward():
    """Let `flex` train on CPU through torch's *reference* FlexAttention backward (the dense
    implementation behind its higher-order op), for tests and benchmarks only: it checks our
    score_mod / mask_mod math in backward without a GPU. It lifts torch's CPU refusal by replacing
    a private function (`flex_attention._validate_device`), and is ~10x slower than SDPA."""
    import torch.nn.attention.flex_attention as fa

    original = fa._validate_device
    fa._validate_device = lambda *args: None
    _CPU_REFERENCE_BACKWARD[0] = True
    try:
        yield
    finally:
        fa._validate_device = original
        _CPU_REFERENCE_BACKWARD[0] = False


def _flex_fn(device: torch.device):
    """torch.compile(flex_attention) on CUDA (the fused kernel); the eager function elsewhere."""
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if "cuda" not in _COMPILED_FLEX:
        _COMPILED_FLEX["cuda"] = torch.compile(flex_attention)
    return _COMPILED_FLEX["cuda"]


def _alibi_score_mod(attn, device):
    """score + slope[h] * (kv - q), with the slopes kept on the module per device (one closure per
    module and device, so a compiled kernel is not re-traced every step)."""
    cached = attn.__dict__.get("_flex_score_mod")
    if cached is not None and cached[0] == device:
        return cached[1]
    slopes = alibi_slopes(attn.num_heads, device).float()

    def alibi(score, b, h, q, kv):
        return score + slopes[h] * (kv - q)

    attn.__dict__["_flex_score_mod"] = (device, alibi)
    return alibi


def _flex_attention(self, hidden_states, residual, alibi, attention_mask, layer_past=None, use_cache=False,
                    output_attentions=False, **kwargs):
    """BloomAttention.forward through FlexAttention when given a BlockMask (packed training); the
    SDPA path otherwise (a conversation alone, evaluation, generation)."""
    if not _is_block_mask(attention_mask) or layer_past is not None or output_attentions:
        return _sdpa_attention(self, hidden_states, residual, alibi, attention_mask, layer_past=layer_past,
                               use_cache=use_cache, output_attentions=output_attentions, **kwargs)
    from transformers.models.bloom.modeling_bloom import dropout_add

    if self.training and self.attention_dropout.p > 0:
        raise BloomchatError("attention 'flex' has no attention dropout; set the model's attention_dropout to 0 "
                             "or use attention: sdpa", where="recipe attention")
    b, n, _ = hidden_states.shape
    q, k, v = self._reshape(self.query_key_value(hidden_states))  # (B, H, L, d) each
    if q.device.type == "cpu" and q.requires_grad and not _CPU_REFERENCE_BACKWARD[0]:
        raise BloomchatError("attention 'flex' trains on a CUDA GPU only: torch has no FlexAttention backward "
                             "on CPU; use attention: sdpa here", where="recipe attention")
    ctx = _flex_fn(q.device)(q, k, v, score_mod=_alibi_score_mod(self, q.device), block_mask=attention_mask,
                             scale=self.inv_norm_factor)
    out = self.dense(ctx.transpose(1, 2).reshape(b, n, self.hidden_size))
    return dropout_add(out, residual, self.hidden_dropout, self.training), None


KERNELS = ("sdpa", "eager", "flex")
_FORWARDS = {"sdpa": _sdpa_attention, "flex": _flex_attention}


def install_packed_attention(model, kernel: str = "sdpa") -> None:
    """Make a BLOOM model read per-conversation ALiBi positions from a 4D mask (idempotent), and
    with kernel="sdpa" run its attention through SDPA, with kernel="flex" through FlexAttention
    (`packed_forward` then passes a BlockMask instead of the dense mask). 2D masks (generation,
    evaluation) and cached decoding keep the stock behaviour."""
    from transformers.models.bloom.modeling_bloom import BloomAttention

    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; use one of {KERNELS}")
    for m in _bloom_modules(model):
        m.build_alibi_tensor = types.MethodType(_packed_alibi, m)
        m.__dict__["_packed_kernel"] = kernel
        for a in m.modules():
            if isinstance(a, BloomAttention):
                a.__dict__.pop("forward", None)
                if kernel in _FORWARDS:
                    a.forward = types.MethodType(_FORWARDS[kernel], a)


def uninstall_packed_attention(model) -> None:
    from transformers.models.bloom.modeling_bloom import BloomAttention

    for m in _bloom_modules(model):
        m.__dict__.pop("build_alibi_tensor", None)
        m.__dict__.pop("_packed_kernel", None)
        for a in m.modules():
            if isinstance(a, BloomAttention):
                a.__dict__.pop("forward", None)


def packed_kernel(model) -> str | None:
    """The kernel `install_packed_attention` gave this (possibly wrapped) BLOOM model, else None."""
    mods = _bloom_modules(model)
    return mods[0].__dict__.get("_packed_kernel") if mods else None


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
            if packed_kernel(model) == "flex":
                mask = flex_block_mask(segment_ids)
            else:
                dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
                mask = block_causal_mask(segment_ids, dtype)
            out = model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        else:
            pos = segment_positions(segment_ids)
            out = model(input_ids=input_ids, position_ids=pos, use_cache=False)
    return out.logits
