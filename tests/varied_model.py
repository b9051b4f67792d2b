"""A micro model whose greedy replies vary from token to token, shared by the infer and eval tests."""

from __future__ import annotations

import torch


def save_varied_model(micro_model_dir, out):
    """The micro BLOOM with larger random weights, so that its greedy replies vary from token to
    token (at the default init every reply is one token repeated, which makes comparisons weak)."""
    from bloomchat.models import load_model, load_tokenizer, save_pretrained

    tok = load_tokenizer(str(micro_model_dir))
    model = load_model(str(micro_model_dir), dtype="float32", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    save_pretrained(model, tok, out)
    return out
