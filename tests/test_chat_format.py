"""The BLOOMChat text format and the HF chat template agree, and segments carry loss exactly on replies."""

from bloomchat.chat_format import parse_text, render_prompt, render_text, segments
from bloomchat.conversation import Conversation


CONV = [
    {"role": "human", "text": "Hi"},
    {"role": "bot", "text": "Hello!"},
    {"role": "human", "text": "你好"},
    {"role": "bot", "text": "你好！有什么可以帮你？"},
]


def test_render_text_matches_bloomchat_layout():
    assert render_text(CONV) == "<human>: Hi\n<bot>: Hello!\n<human>: 你好\n<bot>: 你好！有什么可以帮你？"


def test_segments_concatenate_to_text_and_flag_only_replies():
    segs = segments(CONV)
    assert "".join(s.text for s in segs) == render_text(CONV)
    assert [s.text for s in segs if s.loss] == [" Hello!", " 你好！有什么可以帮你？"]
    assert all("<human>:" not in s.text and "<bot>:" not in s.text for s in segs if s.loss)


def test_prompt_ends_with_bot_tag():
    assert render_prompt(CONV[:3]) == "<human>: Hi\n<bot>: Hello!\n<human>: 你好\n<bot>:"
    assert render_prompt([{"role": "human", "text": "你好"}]) == "<human>: 你好\n<bot>:"


def test_parse_reads_rosey_as_bot_and_roundtrips():
    assert parse_text(render_text(CONV)) == CONV
    turns = parse_text("<human>: Why is it funny?\nRosey: Because it is a pun.")
    assert turns == [{"role": "human", "text": "Why is it funny?"}, {"role": "bot", "text": "Because it is a pun."}]
    # Without the alias, "Rosey:" stays text of the human turn.
    assert parse_text("<human>: a\nRosey: b", bot_aliases=()) == [{"role": "human", "text": "a\nRosey: b"}]


def test_hf_chat_template_renders_exact_bloomchat_prompt(tiny_tokenizer):
    one = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert one == "<human>: 你好\n<bot>:"
    msgs = [{"role": "user" if t["role"] == "human" else "assistant", "content": t["text"]} for t in CONV[:3]]
    rendered = tiny_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == render_prompt(CONV[:3], eos="</s>")
    assert rendered == "<human>: Hi\n<bot>: Hello!</s>\n<human>: 你好\n<bot>:"
    # a conversation ending with a reply: EOS closes it, as training writes it
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert tiny_tokenizer.apply_chat_template(msgs, tokenize=False) == "<human>: q\n<bot>: a</s>"


def test_conversation_record_keeps_verbatim_completion():
    rec = {"prompt": "", "completion": "<human>: q\nRosey: a\n", "source": "oig"}
    conv = Conversation.from_record(rec)
    assert [t.role for t in conv.turns] == ["human", "bot"]
    assert conv.to_record()["completion"] == "<human>: q\nRosey: a\n"
    plain = Conversation.from_record({"turns": CONV, "source": "dolly", "lang": "en"})
    assert plain.to_record()["completion"] == render_text(CONV)
