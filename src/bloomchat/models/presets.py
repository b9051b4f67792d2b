"""Named sizes of randomly initialised BLOOM models, for the demo, tests and CPU benchmarks.

Same architecture as bigscience/bloom (ALiBi, LayerNorm after embeddings, GELU MLP);
only the sizes differ. Parameter counts below assume a 16k vocabulary.

    tiny       hidden 256, 4 layers, 8 heads       ~ 7M  params  (demo, tests)
    small-50m  hidden 640, 8 layers, 10 heads      ~ 50M params  (CPU benchmarks)
    bloom-560m hidden 1024, 24 layers, 16 heads    (shape of bigscience/bloom-560m)
"""

from __future__ import annotations

from typing import Any

from bloomchat.errors import BloomchatError

SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "micro": {"hidden_size": 64, "n_layer": 2, "n_head": 4},  # unit tests: builds in milliseconds
    "tiny": {"hidden_size": 256, "n_layer": 4, "n_head": 8},
    # 16k vocab x 640 = 10.5M embedding + 8 layers x 12 x 640^2 = 39.3M  -> ~50M
    "small-50m": {"hidden_size": 640, "n_layer": 8, "n_head": 10},
    "bloom-560m": {"hidden_size": 1024, "n_layer": 24, "n_head": 16},
}


def build_bloom(preset: str, vocab_size: int, *, seed: int = 0, bos_token_id: int = 1,
                eos_token_id: int = 2, pad_token_id: int = 3):
    """A randomly initialised BloomForCausalLM of a named size (see SIZE_PRESETS)."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    if preset not in SIZE_PRESETS:
        raise BloomchatError(f"unknown model size preset {preset!r}; choose one of {', '.join(SIZE_PRESETS)}")
    cfg = BloomConfig(
        vocab_size=vocab_size,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        **SIZE_PRESETS[preset],
    )
    torch.manual_seed(seed)
    model = BloomForCausalLM(cfg)
    model.generation_config.bos_token_id = bos_token_id
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = pad_token_id
    return model
