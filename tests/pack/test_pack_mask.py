"""The loss mask covers exactly the bot replies (+ their EOS), read back by decoding masked spans."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bloomchat.chat_format import render_text
from bloomchat.conversation import Conversation, Turn
from bloomchat.pack.encode import Encoded, Skipped, encode_conversations, encode_lines

CONVS = [
    [("human", "Hello, how are you?"), ("bot", "I am fine, thank you.")],
    [("human", "你好，请介绍一下北京。"), ("bot", "北京是中国的首都。"), ("human", "还有呢？"),
     ("bot", "有很多名胜古迹，比如故宫。")],
    [("human", "Bonjour <bot>: pas une balise"), ("bot", "Très bien, merci.\n<human>: dans la réponse")],
    [("human", "مرحبا"), ("bot", "")],  # an empty reply still ends with a loss-carrying EOS
]


def _conv(pairs):
    return Conversation(turns=[Turn(r, t) for r, t in pairs], id="x", source="test")


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of mask == 1."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


@pytest.mark.parametrize("pairs", CONVS, ids=["en", "zh-2turn", "tags-inside-text", "empty-reply"])
def test_masked_spans_decode_to_the_replies_plus_eos(tiny_tokenizer, pairs):
    (enc,) = encode_conversations([_conv(pairs)], tiny_tokenizer)
    assert isinstance(enc, Encoded)
    eos = tiny_tokenizer.eos_token_id
    replies = [t for r, t in pairs if r == "bot"]
    spans = _spans(enc.loss_mask)
    assert len(spans) == len(replies)
    for (s, e), reply in zip(spans, replies):
        assert enc.input_ids[e - 1] == eos  # every masked span ends with EOS
        assert tiny_tokenizer.decode(enc.input_ids[s:e - 1].tolist()) == " " + reply
    # Unmasked tokens are the prompt side: together with the replies they give the text back.
    no_eos = enc.input_ids[enc.input_ids != eos].tolist()
    assert tiny_tokenizer.decode(no_eos) == render_text([{"role": r, "text": t} for r, t in pairs])
    prompt = tiny_tokenizer.decode(enc.input_ids[enc.loss_mask == 0].tolist())
    human = [t for r, t in pairs if r == "human"]
    assert prompt.count("\n<bot>:") + prompt.startswith("<bot>:") == len(replies)
    assert all(h in prompt for h in human) and not any(r in prompt for r in replies if len(r) > 3)
    assert enc.input_ids[-1] == eos and enc.loss_mask[-1] == 1  # EOS closes the conversation


def test_trailing_human_turn_is_left_out(tiny_tokenizer):
    pairs = [("human", "Hi"), ("bot", "Hello!"), ("human", "unanswered question")]
    (enc,) = encode_conversations([_conv(pairs)], tiny_tokenizer)
    (full,) = encode_conversations([_conv(pairs[:2])], tiny_tokenizer)
    assert enc.trailing_prompt_tokens > 0
    assert enc.input_ids.tolist() == full.input_ids.tolist()


def test_conversation_without_bot_turn_is_a_counted_skip(tiny_tokenizer):
    lines = [
        (1, json.dumps({"turns": [{"role": "human", "text": "only a question"}]}).encode()),
        (2, b"\n"),
        (3, json.dumps({"completion": "<human>: Hi\n<bot>: Hello"}).encode()),  # prompt/completion only
        (4, b"not json"),
        (5, json.dumps({"turns": [{"role": "narrator", "text": "x"}]}).encode()),
        (6, b"\xff\xfe"),
    ]
    out = encode_lines(lines, "f.jsonl", tiny_tokenizer)
    assert [type(r).__name__ for r in out] == ["Skipped", "Encoded", "Skipped", "Skipped", "Skipped"]
    assert (out[0].reason, out[0].lineno) == ("no_bot_turn", 1)
    assert out[1].key == "f.jsonl:3"  # no id: file:line decides the split
    assert [(r.reason, r.lineno) for r in out[2:]] == [("invalid", 4), ("invalid", 5), ("invalid", 6)]
    assert "UTF-8" in out[4].message and "JSON" in out[2].message


def test_one_batched_call_equals_one_by_one(tiny_tokenizer):
    convs = [_conv(p) for p in CONVS]
    together = encode_conversations(convs, tiny_tokenizer)
    alone = [encode_conversations([c], tiny_tokenizer)[0] for c in convs]
    for a, b in zip(together, alone):
        assert a.input_ids.tolist() == b.input_ids.tolist() and a.loss_mask.tolist() == b.loss_mask.tolist()
    assert not any(isinstance(x, Skipped) for x in together)


def test_byte_order_mark_on_the_first_line_is_accepted(tiny_tokenizer):
    rec = json.dumps({"turns": [{"role": "human", "text": "Hi"}, {"role": "bot", "text": "Hello"}], "id": "a"})
    (enc,) = encode_lines([(1, ("\ufeff" + rec).encode("utf-8"))], "f.jsonl", tiny_tokenizer)
    assert isinstance(enc, Encoded) and enc.key == "a"
