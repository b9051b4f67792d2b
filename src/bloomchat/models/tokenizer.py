"""Byte-level BPE tokenizers trained locally (BLOOM's kind, smaller), and the chat template.

Special tokens follow BLOOM's ids: <unk>=0, <s>=1, </s>=2, <pad>=3, so a tiny model built here
and bigscience/bloom-* agree on what bos/eos/pad are.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from bloomchat.chat_format import CHAT_TEMPLATE, LEGACY_CHAT_TEMPLATES

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def ensure_chat_template(tokenizer, *, overwrite: bool = False):
    """Give a tokenizer the BLOOMChat chat template (and a pad token) unless it has one.

    A template bloomchat saved before EOS followed each bot reply is replaced by the current one:
    the same format, but engines that render the template (vLLM, TGI, llama.cpp) then see the ids
    training used from the second turn on.
    """
    current = getattr(tokenizer, "chat_template", None)
    if overwrite or not current or current in LEGACY_CHAT_TEMPLATES:
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 8000, *, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer on `texts`; returns a transformers fast tokenizer.

    Byte-level: every UTF-8 string is representable (Chinese, Arabic, Hindi ... never <unk>).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",  # left padding keeps batched generation aligned at the prompt end
        clean_up_tokenization_spaces=False,
    )
    return ensure_chat_template(fast)


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the vocabulary and special tokens: shards and models record it, training
    refuses shards whose fingerprint differs from the model's tokenizer."""
    vocab = tokenizer.get_vocab()
    payload = json.dumps(
        {"vocab": sorted(vocab.items()), "eos": tokenizer.eos_token, "bos": tokenizer.bos_token},
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def save_tokenizer(tokenizer, out_dir: str | Path) -> Path:
    """Save in HF layout with the chat template inside tokenizer_config.json.

    transformers 5 would write it to a separate chat_template.jinja, which TGI does not read (its
    chat endpoint then answers "template not found": huggingface/text-generation-inference#3247);
    transformers and vLLM read the template from either place.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ensure_chat_template(tokenizer)
    tokenizer.save_pretrained(out, save_jinja_files=False)
    portable_tokenizer_class(out)
    return out


#: A class name that transformers 4.x and 5.x both map to "load tokenizer.json as it is".
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def portable_tokenizer_class(out_dir: str | Path) -> None:
    """Name a tokenizer class in tokenizer_config.json that transformers 4.x also knows.

    transformers 5 writes `TokenizersBackend`, which 4.57 (still pinned by TGI and many users)
    rejects ("Tokenizer class TokenizersBackend does not exist"). A model-specific name such as
    `BloomTokenizerFast` would let either version rebuild the pipeline its own way; the generic
    fast class reads tokenizer.json verbatim in both, so both tokenise exactly as training did.
    Tokenizers without a tokenizer.json (slow only) are left as they are.
    """
    out = Path(out_dir)
    cfg_path = out / "tokenizer_config.json"
    if not (out / "tokenizer.json").is_file() or not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.get("tokenizer_class") == PORTABLE_TOKENIZER_CLASS:
        return
    cfg["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
