"""Packed conversations do not see each other; loss weights and the data schedule are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bloomchat.errors import BloomchatError
from bloomchat.train.data import Schedule, collate
from bloomchat.train.packing_attn import (
    KERNELS,
    block_causal_mask,
    cpu_flex_reference_backward,
    flex_block_mask,
    install_packed_attention,
    packed_forward,
    packed_kernel,
    segment_positions,
)


def _convs(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (n,), generator=g) for n in lengths]


def _row(convs, pad_to=None):
    ids = torch.cat(convs)
    seg = torch.cat([torch.full((len(c),), i + 1) for i, c in enumerate(convs)])
    if pad_to:
        ids = torch.cat([ids, torch.full((pad_to - len(ids),), 3)])
        seg = torch.cat([seg, torch.zeros(pad_to - len(seg), dtype=torch.long)])
    return ids, seg


@pytest.fixture(scope="module", params=list(KERNELS))
def bloom(request):
    from bloomchat.models import build_bloom

    m = build_bloom("micro", vocab_size=300, seed=1).eval()
    install_packed_attention(m, kernel=request.param)
    return m


def test_packed_logits_equal_logits_alone_bloom(bloom):
    rows = [_convs([9, 23, 5, 14], 300, seed=1), _convs([40, 11], 300, seed=2)]
    batch = [_row(c, pad_to=60) for c in rows]
    ids = torch.stack([b[0] for b in batch])
    seg = torch.stack([b[1] for b in batch])
    with torch.no_grad():
        packed = packed_forward(bloom, ids, seg)
        for r, convs in enumerate(rows):
            off = 0
            for c in convs:
                alone = bloom(input_ids=c[None]).logits[0]
                torch.testing.assert_close(packed[r, off:off + len(c)], alone, atol=2e-5, rtol=1e-5)
                off += len(c)


def test_plain_causal_attention_would_leak(bloom):
    """The check above can fail: without the block mask the second conversation sees the first."""
    convs = _convs([12, 10], 300, seed=3)
    ids, _ = _row(convs)
    with torch.no_grad():
        leaked = bloom(input_ids=ids[None]).logits[0, 12:]
        alone = bloom(input_ids=convs[1][None]).logits[0]
    assert (leaked - alone).abs().max() > 1e-3


def test_alibi_positions_restart_per_conversation_in_bf16(bloom):
    """A conversation placed 1500 tokens into a row gets the same ALiBi bias as alone (bf16 would
    round an absolute-position bias of that size by several units)."""
    m = bloom.to(torch.bfloat16)
    try:
        convs = _convs([1500, 16], 300, seed=4)
        ids, seg = _row(convs)
        with torch.no_grad():
            packed = packed_forward(m, ids[None], seg[None])[0, 1500:].float()
            alone = m(input_ids=convs[1][None]).logits[0].float()
        # the stock absolute-position ALiBi gives ~8e-3 here; per-conversation positions give ~0
        assert (packed - alone).abs().max() < 2e-3
        # and the bias itself is exactly the one the conversation gets alone
        mask = block_causal_mask(seg[None], torch.bfloat16)
        bias = m.transformer.build_alibi_tensor(mask, m.config.n_head, torch.bfloat16)[:, 0, 1500:]
        alone_bias = type(m.transformer).build_alibi_tensor(
            m.transformer, torch.ones(1, 16, dtype=torch.long), m.config.n_head, torch.bfloat16)[:, 0]
        assert torch.equal(bias, alone_bias)
    finally:
        bloom.to(torch.float32)


def test_selected_positions_match_full_logits(bloom):
    ids, seg = _row(_convs([7, 9, 6], 300, seed=5))
    idx = torch.tensor([0, 3, 8, 15, 21])
    with torch.no_grad():
        full = packed_forward(bloom, ids[None], seg[None])[0]
        some = packed_forward(bloom, ids[None], seg[None], idx)
    torch.testing.assert_close(some, full[idx], atol=1e-6, rtol=1e-6)
    assert bloom.lm_head._forward_pre_hooks == {}  # the hook is gone after the call


def test_other_causal_lms_use_restarted_positions():
    """Llama-like models (rotary position ids) are kept apart through restarted position ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    m = LlamaForCausalLM(cfg).eval()
    convs = _convs([10, 17, 8], 300, seed=6)
    ids, seg = _row(convs)
    with torch.no_grad():
        packed = packed_forward(m, ids[None], seg[None])[0]
        off = 0
        for c in convs:
            torch.testing.assert_close(packed[off:off + len(c)], m(input_ids=c[None]).logits[0], atol=2e-5, rtol=1e-5)
            off += len(c)


def test_mask_and_positions():
    seg = torch.tensor([[1, 1, 2, 2, 2, 0]])
    assert segment_positions(seg).tolist() == [[0, 1, 0, 1, 2, 0]]
    allowed = (block_causal_mask(seg, torch.float32)[0, 0] == 0).int()
    assert allowed.tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding sees only itself
    ]


def _np_row(ids, loss, seg):
    return {"input_ids": np.array(ids, np.int32), "loss_mask": np.array(loss, np.int8),
            "segment_ids": np.array(seg, np.int16)}


def test_collate_weights_follow_the_loss_mask():
    # conversation 1: prompt 10 11, reply 12 13(eos); conversation 2: prompt 20, reply 21 22(eos)
    row = _np_row([10, 11, 12, 13, 20, 21, 22], [0, 0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 2, 2, 2])
    short = _np_row([30, 31, 32], [0, 1, 1], [1, 1, 1])
    b = collate([row, short], pad_id=3, prompt_loss_weight=0.0)
    # positions (flattened, 2 rows x 7) whose *next* token is a reply token of the same conversation
    assert b["flat_index"].tolist() == [1, 2, 4, 5, 7, 8]
    assert b["targets"].tolist() == [12, 13, 21, 22, 31, 32]
    assert b["weights"].tolist() == [1.0] * 6
    assert b["loss_tokens"] == 6 and b["tokens"] == 10
    # prompt loss weight 0.5: prompt targets too, except across the conversation boundary (13 -> 20)
    b = collate([row], pad_id=3, prompt_loss_weight=0.5)
    assert b["flat_index"].tolist() == [0, 1, 2, 4, 5]
    assert b["targets"].tolist() == [11, 12, 13, 21, 22]
    assert b["weights"].tolist() == [0.5, 1.0, 1.0, 1.0, 1.0]


def test_rows_padded_to_a_multiple_give_the_same_loss(bloom):
    """GPU training pads rows to a multiple of 64 (cuDNN attention plans per length): the extra
    positions carry no loss and change no logit where loss is taken."""
    g = np.random.default_rng(0)
    row = _np_row(g.integers(5, 300, 37), [0] * 10 + [1] * 9 + [0] * 6 + [1] * 12, [1] * 19 + [2] * 18)
    short = _np_row(g.integers(5, 300, 20), [0] * 8 + [1] * 12, [1] * 20)
    exact = collate([row, short], pad_id=3, prompt_loss_weight=0.0)
    padded = collate([row, short], pad_id=3, prompt_loss_weight=0.0, pad_to_multiple_of=16)
    assert exact["input_ids"].shape[1] == 37 and padded["input_ids"].shape[1] == 48
    assert torch.equal(padded["targets"], exact["targets"]) and torch.equal(padded["weights"], exact["weights"])
    assert padded["tokens"] == exact["tokens"] and padded["loss_tokens"] == exact["loss_tokens"]
    with torch.no_grad():
        a = packed_forward(bloom, exact["input_ids"], exact["segment_ids"], exact["flat_index"])
        b = packed_forward(bloom, padded["input_ids"], padded["segment_ids"], padded["flat_index"])
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_schedule_covers_every_row_once_per_epoch():
    s = Schedule(n_rows=37, global_batch=8, micro_batch=2, world_size=2, epochs=2, max_steps=None, seed=5)
    assert s.accum == 2 and s.steps_per_epoch == 5 and s.total_steps == 10
    for epoch in range(2):
        seen = np.concatenate([s.step_rows(epoch * 5 + k) for k in range(5)])
        assert sorted(seen.tolist()) == list(range(37))
    rows = s.step_rows(3)
    parts = [s.slot_rows(rows, m, r) for m in range(s.accum) for r in range(2)]
    assert sorted(np.concatenate(parts).tolist()) == sorted(rows.tolist())
    assert all(len(p) <= 2 for p in parts)
    # deterministic: a resumed run reads the same rows at the same step
    again = Schedule(n_rows=37, global_batch=8, micro_batch=2, world_size=2, epochs=2, max_steps=None, seed=5)
    assert again.step_rows(7).tolist() == s.step_rows(7).tolist()
    assert s.step_rows(0).tolist() != s.step_rows(5).tolist()  # each epoch is shuffled anew


def _grads(kernel, ids, seg):
    from bloomchat.models import build_bloom

    m = build_bloom("micro", vocab_size=300, seed=2)
    install_packed_attention(m, kernel=kernel)
    with cpu_flex_reference_backward():
        logits = packed_forward(m, ids, seg)
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1])[:-1], ids.reshape(-1)[1:]).backward()
    return logits, {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
def test_kernel_matches_eager_in_gradients_and_leaves_generation_alone(kernel):
    from bloomchat.models import build_bloom

    convs = _convs([11, 6, 19], 300, seed=7)
    ids, seg = _row(convs, pad_to=40)
    _, want = _grads("eager", ids[None], seg[None])
    _, got = _grads(kernel, ids[None], seg[None])
    for n, g in want.items():
        torch.testing.assert_close(got[n], g, atol=1e-5, rtol=1e-4)
    # cached decoding goes through the stock kernel: same tokens with and without the patch
    m = build_bloom("micro", vocab_size=300, seed=2).eval()
    prompt = convs[0][None]
    plain = m.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=3)
    install_packed_attention(m, kernel=kernel)
    assert torch.equal(m.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=3), plain)


@pytest.mark.slow  # torch's reference flex backward on CPU: ~5 s alone on 2 cores
def test_flex_gradients_equal_sdpa_across_tiles_with_padding_rows():
    """Rows longer than one 128-token tile (full, partial and empty tiles all occur), one row
    mostly padding: flex's gradients equal the SDPA path's, and nothing is NaN."""
    rows = [_row(_convs([150, 90, 30], 300, seed=8), pad_to=300), _row(_convs([20], 300, seed=9), pad_to=300)]
    ids = torch.stack([r[0] for r in rows])
    seg = torch.stack([r[1] for r in rows])
    sdpa_logits, sdpa = _grads("sdpa", ids, seg)
    flex_logits, flex = _grads("flex", ids, seg)
    assert torch.isfinite(flex_logits).all()
    torch.testing.assert_close(flex_logits, sdpa_logits, atol=2e-5, rtol=1e-5)
    for n, g in sdpa.items():
        assert torch.isfinite(flex[n]).all(), n
        torch.testing.assert_close(flex[n], g, atol=1e-5, rtol=1e-4)


def test_flex_block_mask_is_the_dense_mask_in_tiles():
    seg = torch.tensor([[1] * 150 + [2] * 100 + [0] * 50, [1] * 20 + [0] * 280])
    bm = flex_block_mask(seg)
    dense = block_causal_mask(seg, torch.float32)[:, 0] == 0
    assert torch.equal(bm.to_dense().bool()[:, 0], _tiles(dense, 128))
    assert bm.kv_num_blocks.numel() == 2 * 3  # B x ceil(300 / 128) tiles of queries: no L x L tensor


def _tiles(allowed, size):
    """Which size x size tiles of a dense (B, L, L) bool mask hold any allowed pair."""
    b, n, _ = allowed.shape
    t = -(-n // size)
    pad = torch.zeros(b, t * size, t * size, dtype=torch.bool)
    pad[:, :n, :n] = allowed
    return pad.reshape(b, t, size, t, size).any(4).any(2)


def test_flex_passes_no_dense_mask_and_refuses_cpu_training(monkeypatch):
    from bloomchat.models import build_bloom
    from bloomchat.train import packing_attn

    m = build_bloom("micro", vocab_size=300, seed=2)
    install_packed_attention(m, kernel="flex")
    assert packed_kernel(m) == "flex" and packed_kernel(torch.nn.Sequential(m)) == "flex"

    def no_dense(*args, **kwargs):
        raise AssertionError("flex built the dense L x L mask")

    monkeypatch.setattr(packing_attn, "block_causal_mask", no_dense)
    ids, seg = _row(_convs([9, 12], 300, seed=10), pad_to=24)
    with torch.no_grad():
        assert torch.isfinite(packed_forward(m, ids[None], seg[None])).all()
    with pytest.raises(BloomchatError, match="CUDA GPU only"):
        packed_forward(m, ids[None], seg[None])


@pytest.mark.parametrize("heads,want", [
    (4, [2**-2, 2**-4, 2**-6, 2**-8]),
    (8, [2.0**-k for k in range(1, 9)]),
    # not a power of two: the 4 slopes of 4 heads, then odd powers of the 8-head base (ALiBi paper)
    (6, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]),
])
def test_alibi_slopes_follow_the_paper(heads, want):
    from bloomchat.train.packing_attn import alibi_slopes

    torch.testing.assert_close(alibi_slopes(heads, "cpu"), torch.tensor(want), rtol=1e-6, atol=0)
