"""Prompt-set loaders: every layout in ../shared/data, the documented jsonl, and clear errors."""

from __future__ import annotations

import json

import pytest

from arena_testlib import write_jsonl
from bloomchat.arena.prompt_sets import UnsupportedLayout, load_prompt_file, prompt_files
from bloomchat.errors import BloomchatError


def test_vicuna80_12lang_languages_from_file_names(shared_data):
    folder = shared_data("eval_prompts_vicuna80_12lang")
    items = [i for f in prompt_files(folder) for i in load_prompt_file(f)]
    assert len(items) == 800
    assert sorted({i.lang for i in items}) == ["ar", "de", "en", "es", "fr", "it", "ja", "ko", "pt", "zh"]
    zh1 = next(i for i in items if i.key == "vicuna80_12lang/zh/1")
    assert zh1.turns == [{"role": "human", "text": "我怎样才能提高时间管理技能？"}] and zh1.category == "generic"


def test_llmzoo_ja_vicuna_oasst60_layouts(shared_data):
    zoo = load_prompt_file(shared_data("eval_prompts_llmzoo_multilingual", "ko100.jsonl"))
    assert len(zoo) == 100 and {i.lang for i in zoo} == {"ko"} and zoo[0].category == "generic"
    mixed = load_prompt_file(shared_data("eval_prompts_llmzoo_multilingual", "multi-lingual-question.jsonl"))
    assert sum(i.lang == "zh" for i in mixed) == 70 and "llmzoo_multilingual/zh/71" in {i.key for i in mixed}
    # the ja file's name says nothing: the language is detected from the text
    ja = load_prompt_file(shared_data("eval_prompts_ja_vicuna80", "question.jsonl"))
    assert len(ja) == 80 and {i.lang for i in ja} == {"ja"}
    oa = load_prompt_file(shared_data("eval_prompts_oasst_multilingual60", "multilingual-60.jsonl"))
    assert len(oa) == 60 and len({i.lang for i in oa}) == 12
    assert next(i for i in oa if i.key == "oasst_multilingual60/zh/3").turns[0]["text"] == "我很难过。如何让我开心起来？"


def test_bayling_multiturn_is_refused_with_reason(shared_data):
    with pytest.raises(UnsupportedLayout, match=r"multiturn\.zh\.jsonl:1: multi-turn"):
        load_prompt_file(shared_data("eval_prompts_bayling80", "BayLing-80.multiturn.zh.jsonl"))
    single = load_prompt_file(shared_data("eval_prompts_bayling80", "BayLing-80.singleturn.zh.jsonl"))
    assert len(single) == 80 and single[0].key == "bayling80/zh/1"


def test_oaast_rm_zh_ranked_replies_and_history(shared_data):
    items = load_prompt_file(shared_data("llamafactory_demo_zh_en", "oaast_rm_zh.json"), ranked_prefix="oasst")
    assert len(items) == 775 and {i.lang for i in items} == {"zh"}
    raw = json.loads(shared_data("llamafactory_demo_zh_en", "oaast_rm_zh.json").read_text(encoding="utf-8"))
    with_hist = next(k for k, r in enumerate(raw) if r["history"])
    it = items[with_hist]
    assert [t["role"] for t in it.turns] == ["human", "bot"] * len(raw[with_hist]["history"]) + ["human"]
    assert it.replies["oasst-rank1"] == raw[with_hist]["output"][0]
    assert len(it.replies) == len(raw[with_hist]["output"])


def test_documented_jsonl_and_prepared_records(tmp_path):
    f = write_jsonl(tmp_path / "mine.jsonl", [
        {"id": "a", "lang": "zh", "prompt": "你好"},
        {"id": "b", "lang": "fr", "turns": [{"role": "human", "text": "Salut"}, {"role": "bot", "text": "Bonjour"},
                                            {"role": "human", "text": "Ça va ?"}], "category": "chat"},
        {"prompt": "", "completion": "<human>: Hi\n<bot>: Hello", "lang": "en", "id": "dolly:3", "source": "dolly"},
    ])
    items = load_prompt_file(f, set_name="demo")
    assert [i.key for i in items] == ["demo/zh/a", "demo/fr/b", "demo/en/dolly:3"]
    assert items[1].turns[-1] == {"role": "human", "text": "Ça va ?"} and items[1].category == "chat"
    assert items[2].turns == [{"role": "human", "text": "Hi"}]  # the trailing bot turn is dropped


@pytest.mark.parametrize("rows, message", [
    ([{"id": 1, "lang": "zh"}], r"bad\.jsonl:1: no prompt text"),
    ([{"id": 1, "lang": "zh", "prompt": "ok"}, {"lang": "zh", "prompt": "no id"}], r"bad\.jsonl:2: no 'id'"),
    ([{"id": 1, "lang": "zh", "prompt": "x"}, {"id": 1, "lang": "zh", "prompt": "y"}], "appears more than once"),
    ([{"id": 1, "lang": "Chinese!", "prompt": "x"}], r"bad\.jsonl:1 lang: language 'Chinese!'"),
    (["a", "b", "c"], "bare strings: pass --lang"),
])
def test_bad_files_name_file_line_and_field(tmp_path, rows, message):
    f = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(BloomchatError, match=message):
        load_prompt_file(f)


def test_broken_json_names_the_line(tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"id": 1, "lang": "zh", "prompt": "x"}\n{"id": 2,\n', encoding="utf-8")
    with pytest.raises(BloomchatError, match=r"broken\.jsonl:2: not JSON"):
        load_prompt_file(f)


def test_lang_blocks_split_bare_strings(tmp_path):
    f = write_jsonl(tmp_path / "strings.jsonl", ["hi", "bye", "salut", "au revoir"])
    items = load_prompt_file(f, lang_blocks=["en", "fr"])
    assert [(i.key, i.turns[0]["text"]) for i in items] == [
        ("strings/en/1", "hi"), ("strings/en/2", "bye"), ("strings/fr/1", "salut"), ("strings/fr/2", "au revoir")]
    with pytest.raises(BloomchatError, match="equal language blocks"):
        load_prompt_file(f, lang_blocks=["en", "fr", "de"])


def test_records_without_ids_are_numbered_by_line(tmp_path):
    # BELLE eval_set.json: {"question", "std_answer", "class"} lines and no id at all
    f = write_jsonl(tmp_path / "eval_set.json", [{"question": "写一首诗", "std_answer": "", "class": "generation"},
                                                 {"question": "1+1=?", "std_answer": "2", "class": "math"}])
    items = load_prompt_file(f, lang="zh")
    assert [(i.key, i.category) for i in items] == [("eval_set/zh/1", "generation"), ("eval_set/zh/2", "math")]


def test_belle_eval_set_imports(shared_data):
    items = load_prompt_file(shared_data("belle_eval_set_zh", "eval_set.json"))
    assert len(items) == 1000 and {i.lang for i in items} == {"zh"} and len({i.key for i in items}) == 1000
