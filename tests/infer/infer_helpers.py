"""Test helpers for tests/infer: a causal LM whose reply is scripted, for exact text checks."""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch
from varied_model import save_varied_model  # noqa: F401  (re-exported for the infer tests)

#: Chats the engine tests run: English, Chinese, a multi-turn French/Spanish one, Vietnamese.
CHATS = [
    [{"role": "user", "content": "Hello, how are you?"}],
    [{"role": "user", "content": "你好，请介绍一下北京。"}],
    [{"role": "user", "content": "Bonjour"}, {"role": "assistant", "content": "Très bien"},
     {"role": "user", "content": "¿Dónde está la biblioteca?"}],
    [{"role": "user", "content": "Xin chào"}],
]


class ScriptedLM(torch.nn.Module):
    """Writes `script` (token ids) after any prompt, then repeats its last entry.

    It runs through the real engine: its cache marks prompt positions 0 and reply positions 1,
    so a row's count of reply tokens survives the engine's batching, padding and trimming.
    """

    def __init__(self, script: list[int], vocab: int, *, eos: int = 2, delay: float = 0.0):
        super().__init__()
        from transformers import BloomConfig, GenerationConfig

        self.config = BloomConfig(vocab_size=vocab)
        self.generation_config = GenerationConfig(eos_token_id=eos)
        self.script, self.vocab, self.delay = script, vocab, delay
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, cache=None, attention_mask=None, use_cache=True):
        from transformers import DynamicCache

        if self.delay:
            time.sleep(self.delay)
        b, t = input_ids.shape
        mark = 0.0 if cache is None else 1.0
        cache = cache if cache is not None else DynamicCache()
        cache.update(torch.full((b, 1, t, 1), mark), torch.zeros(b, 1, t, 1), 0)
        n_gen = cache.layers[0].keys[:, 0, :, 0].sum(dim=1).long()
        logits = torch.zeros(b, t, self.vocab)
        for i in range(b):
            logits[i, -1, self.script[min(int(n_gen[i]), len(self.script) - 1)]] = 10.0
        return SimpleNamespace(logits=logits, cache=cache)


def scripted_chat_model(tokenizer, text: str, *, eos_after: bool = True, delay: float = 0.0, name="scripted"):
    """A ChatModel that answers every prompt with `text` (then EOS, or the last token forever)."""
    from bloomchat.infer import ChatModel

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    script = ids + ([2] if eos_after else ids[-1:])
    return ChatModel(ScriptedLM(script, len(tokenizer), delay=delay), tokenizer, name=name)


def moderate_pineapple(text: str) -> str | None:
    """A pluggable moderation check for tests: flags pineapple on pizza."""
    return "fruit" if "pineapple" in text.lower() else None
