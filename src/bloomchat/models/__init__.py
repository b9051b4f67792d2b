"""Base models and tokenizers: build tiny ones locally, load real ones, save in HF layout."""

from bloomchat.models.presets import SIZE_PRESETS, build_bloom
from bloomchat.models.tokenizer import (
    ensure_chat_template,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)
from bloomchat.models.loading import load_model, load_tokenizer, save_pretrained
from bloomchat.models.base import build_local_base
from bloomchat.models.base_import import import_base

__all__ = [
    "SIZE_PRESETS",
    "build_bloom",
    "build_local_base",
    "ensure_chat_template",
    "import_base",
    "load_model",
    "load_tokenizer",
    "save_pretrained",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
]
