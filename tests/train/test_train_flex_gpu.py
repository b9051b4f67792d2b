"""FlexAttention (compiled, fused) on a CUDA GPU in bf16: packed conversations still equal each
alone, and forward/backward stay as close to fp32 as the SDPA path. Skipped without a GPU (CI has
none); bench/gpu_check.sh runs it where one is lent."""

from __future__ import annotations

import pytest
import torch

from bloomchat.train.packing_attn import install_packed_attention, packed_forward

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _batch(vocab):
    g = torch.Generator().manual_seed(0)
    rows = [[300, 500, 200], [700, 90]]  # > one 128-token tile; the second row ends in padding
    ids = torch.full((2, 1024), 3)
    seg = torch.zeros((2, 1024), dtype=torch.long)
    for r, lengths in enumerate(rows):
        off = 0
        for i, n in enumerate(lengths):
            ids[r, off:off + n] = torch.randint(4, vocab, (n,), generator=g)
            seg[r, off:off + n] = i + 1
            off += n
    return rows, ids.cuda(), seg.cuda()


def _model(kernel, dtype):
    from bloomchat.models import build_bloom

    m = build_bloom("tiny", vocab_size=500, seed=3).cuda().to(dtype)
    install_packed_attention(m, kernel=kernel)
    return m


def test_flex_bf16_packed_equals_alone_and_tracks_fp32():
    rows, ids, seg = _batch(500)
    ref = _model("eager", torch.float32)
    want = packed_forward(ref, ids, seg)
    want.float().sum().backward()
    errs, grads = {}, {}
    for kernel in ("sdpa", "flex"):
        m = _model(kernel, torch.bfloat16)
        got = packed_forward(m, ids, seg)
        assert torch.isfinite(got).all(), kernel  # padding rows too
        errs[kernel] = (got.float() - want).abs().max().item()
        got.float().sum().backward()
        grads[kernel] = max((p.grad.float() - q.grad).abs().max().item() / (q.grad.abs().max().item() + 1e-6)
                            for p, q in zip(m.parameters(), ref.parameters()))
        if kernel == "flex":
            with torch.no_grad():
                packed = packed_forward(m, ids, seg)
                off = 0
                for n in rows[0]:
                    alone = m(input_ids=ids[:1, off:off + n]).logits[0]
                    assert (packed[0, off:off + n].float() - alone.float()).abs().max() < 5e-2
                    off += n
    assert errs["flex"] <= 2 * errs["sdpa"] + 1e-2, errs
    assert grads["flex"] <= 2 * grads["sdpa"] + 1e-2, grads
