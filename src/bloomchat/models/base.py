"""Build a small base model from scratch: a byte-level BPE tokenizer trained on your text plus a
randomly initialised BLOOM of a named size, saved together in Hugging Face layout.

This is what `bloomchat demo` uses in place of bigscience/bloom (which cannot be downloaded on
an offline laptop); real runs point the recipe's `base_model` at a hub name or checkpoint dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from bloomchat.errors import BloomchatError
from bloomchat.models.loading import save_pretrained
from bloomchat.models.presets import build_bloom
from bloomchat.models.tokenizer import train_bpe_tokenizer


def build_local_base(texts: Iterable[str], out_dir: str | Path, *, preset: str = "tiny",
                     vocab_size: int = 8000, seed: int = 0) -> Path:
    """Train a tokenizer on `texts`, build a BLOOM of size `preset`, save both to `out_dir`."""
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise BloomchatError("no text to train a tokenizer on")
    tok = train_bpe_tokenizer(texts, vocab_size=vocab_size)
    # Round the embedding up to a multiple of 64, as BLOOM pads its 250,680-token vocabulary to a
    # 250,880-row embedding (3,920 x 64); rows past the tokenizer's vocabulary are never produced.
    padded_vocab = -(-len(tok) // 64) * 64
    model = build_bloom(preset, vocab_size=padded_vocab, seed=seed,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    return save_pretrained(model, tok, out_dir)
