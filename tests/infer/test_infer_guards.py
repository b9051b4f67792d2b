"""Guards: loop cut, language drift resampling, moderation (default and plugged in), counts."""

from __future__ import annotations

import pytest

from bloomchat.errors import BloomchatError
from bloomchat.infer import GenerationParams
from bloomchat.infer.engine import Event
from bloomchat.infer.guards import (
    GuardConfig, GuardedChat, GuardStats, KeywordModerator, detect_language, find_loop, guarded_events,
    load_moderator,
)
from infer_helpers import scripted_chat_model

ZH_USER = [{"role": "user", "content": "请用中文介绍一下北京的历史和文化。"}]
EN_REPLY = "Beijing is the capital of China and has a history of more than three thousand years."
ZH_REPLY = "北京是中国的首都，有三千多年的历史，文化底蕴深厚。"


@pytest.mark.parametrize("text,cut", [
    ("I am fine." + " I am fine." * 3, len("I am fine.")),
    ("Wow" + "!" * 40, len("Wow!")),
    ("好的。" + "我很好。" * 9, len("好的。我很好。")),
    ("A normal answer that does not loop at all, with a few words.", None),
    ("ha ha", None),  # too short to call a loop
])
def test_infer_find_loop(text, cut):
    assert find_loop(text) == cut


def test_infer_detect_language_many_scripts():
    assert detect_language("请介绍一下北京。")[0] == "zh"
    assert detect_language("Bonjour, comment allez-vous aujourd'hui ?")[0] == "fr"
    assert detect_language("The weather is lovely today in London.")[0] == "en"
    assert detect_language("こんにちは、元気ですか？")[0] == "ja"


def _fake_backend(replies):
    """start(params) for guarded_events: attempt k streams replies[k] in 5-character pieces."""
    calls = []

    def start(params):
        text = replies[min(len(calls), len(replies) - 1)]
        calls.append(params)
        for i in range(0, len(text), 5):
            yield Event(text=text[i:i + 5])
        yield Event(done=True, finish_reason="stop", completion_tokens=len(text))
    return start, calls


def _run(start, messages, config, params=GenerationParams(temperature=0)):
    stats = GuardStats()
    evs = list(guarded_events(start, messages, params, config, stats))
    return "".join(e.text for e in evs), evs[-1], stats.snapshot()


def test_infer_language_drift_is_resampled():
    start, calls = _fake_backend([EN_REPLY, ZH_REPLY])
    text, last, counts = _run(start, ZH_USER, GuardConfig(moderator=None))
    assert text == ZH_REPLY and last.finish_reason == "stop"
    assert counts["language_drift"] == 1 and counts["language_resampled"] == 1 and counts["language_unfixed"] == 0
    assert len(calls) == 2 and calls[1].temperature > 0 and calls[1].seed is not None  # greedy -> resampled


def test_infer_language_drift_unfixed_is_counted_and_let_through():
    start, calls = _fake_backend([EN_REPLY])
    text, _, counts = _run(start, ZH_USER, GuardConfig(moderator=None, language_retries=2))
    assert text == EN_REPLY and len(calls) == 3
    assert counts["language_drift"] == 3 and counts["language_unfixed"] == 1


def test_infer_same_language_or_short_user_text_is_left_alone():
    start, calls = _fake_backend([EN_REPLY])
    assert _run(start, [{"role": "user", "content": "你好"}], GuardConfig(moderator=None))[0] == EN_REPLY
    start, calls = _fake_backend([ZH_REPLY])
    _, _, counts = _run(start, ZH_USER, GuardConfig(moderator=None))
    assert counts["language_checked"] == 1 and counts["language_drift"] == 0 and len(calls) == 1


def test_infer_moderation_input_output_and_plugin():
    start, calls = _fake_backend(["Sure."])
    text, last, counts = _run(start, [{"role": "user", "content": "如何在家制造炸弹？请详细说明步骤。"}], GuardConfig())
    assert last.finish_reason == "content_filter" and text.startswith("抱歉") and calls == []
    start, _ = _fake_backend(["First mix the flour. Then here is how to make a bomb: no."])
    text, last, counts = _run(start, [{"role": "user", "content": "Give me a cake recipe please"}], GuardConfig())
    assert last.finish_reason == "content_filter" and "bomb" not in text and counts["moderation_output_blocked"] == 1
    plug = load_moderator("infer_helpers:moderate_pineapple")
    start, _ = _fake_backend(["ok"])
    text, last, _ = _run(start, [{"role": "user", "content": "Is pineapple on pizza fine?"}],
                         GuardConfig(moderator=plug, language=False))
    assert last.finish_reason == "content_filter"
    assert load_moderator("none") is None and isinstance(load_moderator("default"), KeywordModerator)
    with pytest.raises(BloomchatError, match="moderation"):
        load_moderator("no_such_module_xyz:check")
    assert KeywordModerator()("How do I bake bread?") is None


def test_infer_guarded_chat_over_the_engine_cuts_a_loop(tiny_tokenizer):
    cm = scripted_chat_model(tiny_tokenizer, " Fine, thanks." * 10)
    chat = GuardedChat(cm, GuardConfig(language=False))
    try:
        assert chat.reply([{"role": "user", "content": "How are you?"}],
                          GenerationParams(temperature=0, max_new_tokens=200)) == "Fine, thanks."
        assert chat.stats.snapshot()["repetition_cut"] == 1
        assert chat.reply_batch([[{"role": "user", "content": "x"}]] * 3,
                                GenerationParams(temperature=0, max_new_tokens=200)) == ["Fine, thanks."] * 3
    finally:
        chat.close()
