"""Models whose greedy ids say something: random weights with a wide spread, so that the argmax
changes from step to step (std 0.02 weights give near-uniform logits and a constant argmax)."""

from __future__ import annotations

import pytest
import torch


def _spread(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # keep layer norms near identity
                continue
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.fixture(scope="session")
def sharp_bloom_dir(tmp_path_factory, tiny_tokenizer):
    """2-layer BLOOM (hidden 64), embedding padded to a multiple of 64 rows as `bloomchat demo` does."""
    from bloomchat.models import build_bloom, save_pretrained

    out = tmp_path_factory.mktemp("sharp_bloom")
    model = _spread(build_bloom("micro", vocab_size=-(-len(tiny_tokenizer) // 64) * 64, seed=0))
    save_pretrained(model, tiny_tokenizer, out)
    return out


@pytest.fixture(scope="session")
def sharp_llama_dir(tmp_path_factory, tiny_tokenizer):
    """2-layer Llama with grouped-query attention and an untied output head, the tiny tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from bloomchat.models import save_pretrained

    out = tmp_path_factory.mktemp("sharp_llama")
    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    model = _spread(LlamaForCausalLM(cfg), seed=1)
    save_pretrained(model, tiny_tokenizer, out)
    return out
