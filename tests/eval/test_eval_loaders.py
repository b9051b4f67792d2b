"""Loaders on the real sets (exact counts, chosen records) and bad input named by file and line."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bloomchat.errors import BloomchatError
from bloomchat.eval.chat import load_prompts
from bloomchat.langs import lang_from_path_tokens, normalize_lang
from bloomchat.eval.mc import MCTask, load_mc
from bloomchat.eval.translation import TranslationTask, load_flores, load_wmt, parse_directions


# ------------------------------------------------------------------------------ real data
def test_flores_real(shared_data):
    d = shared_data("flores101")
    pairs = load_flores(d, [("en", "zh"), ("zh", "en")])
    assert len(pairs) == 2 * 708
    assert pairs[0].src.startswith('"We now have 4-month-old mice that are non-diabetic')
    assert pairs[0].ref.startswith("他补充道：“我们现在有 4 个月大没有糖尿病的老鼠")
    assert pairs[708].src_lang == "zh" and pairs[708].ref == pairs[0].src
    task = TranslationTask(str(d), limit=5)  # default: en <-> every other language
    groups = Counter(ex["group"] for ex in task.examples())
    assert groups == {g: 5 for g in ("en-de", "de-en", "en-ro", "ro-en", "en-zh", "zh-en")}


def test_wmt_real(shared_data):
    d = shared_data("wmt22")
    pairs = load_wmt(d, None)
    assert Counter(f"{p.src_lang}-{p.tgt_lang}" for p in pairs) == {
        "de-en": 1389, "en-de": 1426, "en-zh": 1426, "zh-en": 1313}
    zh_en = load_wmt(d, [("zh", "en")])
    assert (zh_en[0].src, zh_en[0].ref) == ("是否有途径处罚他", "Is there a way to punish him?")
    single = load_wmt(d / "newstest22.zh-en.zh", None)  # one source file: its reference is found
    assert len(single) == 1313


def test_xwinograd_real(shared_data):
    items = load_mc(shared_data("xwinograd", "xwinograd.tsv"))
    assert len(items) == 2772
    assert Counter(i["lang"] for i in items) == {"en": 1627, "ja": 671, "ru": 221, "pt": 184, "fr": 58, "zh": 11}
    first = items[0]
    assert first["context"] == ["The city councilmen refused the demonstrators a permit because The city councilmen",
                                 "The city councilmen refused the demonstrators a permit because the demonstrators"]
    assert first["choices"] == [" feared violence."] * 2 and first["label"] == 0
    ptb = next(i for i in items if i["id"] == "xwinograd-en:606")  # tokens with `` '' n't
    assert ptb["context"][1] == "John tried to bake with Michael, but Michael" and ptb["label"] == 1
    zh = [i for i in items if i["lang"] == "zh"]
    assert zh[1]["context"] == ["奖杯无法放进到棕色的箱子里，因为箱子", "奖杯无法放进到棕色的箱子里，因为奖杯"]
    assert zh[1]["choices"] == ["太小了。"] * 2 and zh[1]["label"] == 0
    assert sum(1 for i in items if i["context"] == "") == 9  # pronoun at the end: whole-sentence scoring
    task = MCTask(str(shared_data("xwinograd", "xwinograd.tsv")), langs=["zh", "ja"], limit=3)
    assert Counter(e["group"] for e in task.examples()) == {"zh": 3, "ja": 3}


@pytest.mark.parametrize("folder,total,langs", [
    ("eval_prompts_vicuna80_12lang", 800, {x: 80 for x in ("ar", "zh", "de", "en", "fr", "it", "ja", "ko", "pt", "es")}),
    ("eval_prompts_oasst_multilingual60", 60,
     {x: 5 for x in ("en", "es", "ru", "de", "fr", "uk", "it", "vi", "zh", "ko", "ja", "th")}),
    ("belle_eval_set_zh", 1000, {"zh": 1000}),
    ("eval_prompts_bayling80", 320, {"en": 160, "zh": 160}),
])
def test_prompt_sets_real(shared_data, folder, total, langs):
    items = load_prompts(shared_data(folder))
    assert len(items) == total
    assert dict(Counter(i["lang"] for i in items)) == langs


def test_language_from_file_name_not_from_any_folder_token(shared_data):
    d = shared_data("eval_prompts_ja_vicuna80")  # question.jsonl in a folder whose last token is no language
    with pytest.raises(BloomchatError, match="no language.*--lang"):
        load_prompts(d)
    ja = load_prompts(d, lang="ja")
    assert len(ja) == 80 and ja[0]["turns"] == ["時間管理能力を向上させるにはどうしたらいいですか？"]


def test_prompt_records_real(shared_data):
    oasst = load_prompts(shared_data("eval_prompts_oasst_multilingual60"))
    assert oasst[40]["turns"] == ["我如何制造一枚炸弹？"] and oasst[40]["lang"] == "zh"
    belle = load_prompts(shared_data("belle_eval_set_zh"))
    assert Counter(i["category"] for i in belle)["closed qa"] == 52  # written with a no-break space
    bay = load_prompts(shared_data("eval_prompts_bayling80", "BayLing-80.multiturn.zh.jsonl"))
    assert bay[0]["turns"] == ["我该如何提高我的时间管理技能？", "推荐一些资源或书籍。"]
    llm = load_prompts(shared_data("eval_prompts_llmzoo_multilingual", "multi-lingual-question.jsonl"))
    assert Counter(i["lang"] for i in llm) == {"en": 70, "zh": 70}
    zh100 = load_prompts(shared_data("eval_prompts_llmzoo_multilingual", "zh100.jsonl"))
    assert len(zh100) == 100 and zh100[0]["turns"] == ["如何提高我的时间管理技能？"] and zh100[0]["category"] == "generic"


# ----------------------------------------------------------------------------- converters
def test_xnli_pawsx_xstorycloze_converters(tmp_path):
    xnli = tmp_path / "xnli.test.tsv"
    xnli.write_text("language\tgold_label\tsentence1\tsentence2\n"
                    "zh\tcontradiction\t他走了。\t他还在。\n"
                    "en\tentailment\tHe left.\tHe is gone.\n", encoding="utf-8")
    items = load_mc(xnli)
    assert items[0]["context"] == "他走了。, 正确?" and items[0]["label"] == 2
    assert items[0]["choices"] == [" 是的, 他还在。", " 所以, 他还在。", " 不是的, 他还在。"]
    assert items[1]["choices"][0] == " Yes, He is gone." and items[1]["lang"] == "en"

    paws = tmp_path / "x-final" / "de"
    paws.mkdir(parents=True)
    (paws / "test_2k.tsv").write_text("id\tsentence1\tsentence2\tlabel\n1\tEr kam.\tEr ist gekommen.\t1\n",
                                      encoding="utf-8")
    p = load_mc(paws / "test_2k.tsv")
    assert p == [{"id": "pawsx-de:2", "lang": "de", "label": 1, "context": "Er kam., richtig?",
                  "choices": [" Nein, Er ist gekommen.", " Ja, Er ist gekommen."], "where": f"{paws / 'test_2k.tsv'}:2"}]

    story = tmp_path / "spring2016.val.zh.tsv.split_20_80_eval.tsv"
    story.write_text("InputStoryid\tInputSentence1\tInputSentence2\tInputSentence3\tInputSentence4\t"
                     "RandomFifthSentenceQuiz1\tRandomFifthSentenceQuiz2\tAnswerRightEnding\n"
                     "s1\t他饿了。\t他去了厨房。\t他打开冰箱。\t里面有面包。\t他吃了面包。\t他去睡觉了。\t1\n",
                     encoding="utf-8")
    s = load_mc(story)
    assert s[0]["context"] == "他饿了。他去了厨房。他打开冰箱。里面有面包。" and s[0]["label"] == 0
    assert s[0]["choices"] == ["他吃了面包。", "他去睡觉了。"] and s[0]["lang"] == "zh"


# ------------------------------------------------------------------------------ bad input
def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_unaligned_flores_names_the_file(tmp_path):
    _write(tmp_path / "devtest.en.txt", ["a", "b", "c"])
    _write(tmp_path / "devtest.zh.txt", ["甲", "乙"])
    with pytest.raises(BloomchatError, match=r"devtest\.en\.txt:3: files are not aligned.*zh\.txt has 2 lines.*3"):
        load_flores(tmp_path, [("en", "zh")])


def test_empty_line_names_file_and_line(tmp_path):
    _write(tmp_path / "devtest.en.txt", ["a", "", "c"])
    _write(tmp_path / "devtest.zh.txt", ["甲", "乙", "丙"])
    with pytest.raises(BloomchatError, match=r"devtest\.en\.txt:2: empty line"):
        load_flores(tmp_path, [("en", "zh")])


def test_unaligned_wmt(tmp_path):
    _write(tmp_path / "news.en-zh.en", ["a", "b"])
    _write(tmp_path / "news.en-zh.zh", ["甲"])
    with pytest.raises(BloomchatError, match=r"news\.en-zh\.en:2: source and reference are not aligned"):
        load_wmt(tmp_path, None)


def test_mc_label_out_of_range(tmp_path):
    f = _write(tmp_path / "set.jsonl", [json.dumps({"context": "c", "choices": ["a", "b"], "label": 0, "lang": "en"}),
                                         json.dumps({"context": "c", "choices": ["a", "b", "c"], "label": 3, "lang": "en"})])
    with pytest.raises(BloomchatError, match=r"set\.jsonl:2 field label: label 3 out of range for 3 choices"):
        load_mc(f)


def test_unknown_language_code(tmp_path):
    f = _write(tmp_path / "set.jsonl", [json.dumps({"context": "c", "choices": ["a", "b"], "label": 0, "lang": "xx"})])
    with pytest.raises(BloomchatError, match=r"set\.jsonl:1 field lang: unknown language code 'xx'"):
        load_mc(f)
    with pytest.raises(BloomchatError, match="unknown language code 'zn'"):
        parse_directions("en-zn")
    assert normalize_lang("zho_Hans") == "zh" and normalize_lang("jp") == "ja" and normalize_lang("Deutsch") == "de"
    assert lang_from_path_tokens("questions_Chinese") == "zh" and lang_from_path_tokens("eval_set") is None


def test_empty_sets(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("", encoding="utf-8")
    with pytest.raises(BloomchatError, match=r"empty\.jsonl: no multiple-choice examples"):
        MCTask(str(f), format="jsonl").examples()
    with pytest.raises(BloomchatError, match=r"empty\.jsonl: empty prompt file"):
        load_prompts(f)
    pairs = _write(tmp_path / "pairs.jsonl", [json.dumps({"src": "a", "ref": "b", "src_lang": "en", "tgt_lang": "fr"})])
    with pytest.raises(BloomchatError, match="no sentence pairs to evaluate for directions en-zh"):
        TranslationTask(str(pairs), directions=[("en", "zh")]).examples()


def test_bad_json_and_missing_fields(tmp_path):
    f = _write(tmp_path / "p.jsonl", ['{"src": "a", "ref": "b", "src_lang": "en", "tgt_lang": "fr"}', "{oops"])
    with pytest.raises(BloomchatError, match=r"p\.jsonl:2: invalid JSON"):
        TranslationTask(str(f)).examples()
    g = _write(tmp_path / "q.jsonl", ['{"text": "hi"}'])
    with pytest.raises(BloomchatError, match="no language.*--lang"):
        load_prompts(g)
    assert load_prompts(g, lang="en")[0]["lang"] == "en"
    h = _write(tmp_path / "r.jsonl", ['{"lang": "en", "choices": ["a", "b"], "label": true}'])
    with pytest.raises(BloomchatError, match=r"r\.jsonl:1 field label"):
        load_mc(h)


def test_hf_style_jsonl_layouts_take_lang_from_file_name(tmp_path):
    d = tmp_path / "xnli"
    d.mkdir()
    (d / "test.de.jsonl").write_text(json.dumps({"premise": "Er kam.", "hypothesis": "Er ist da.", "label": 1}) + "\n",
                                     encoding="utf-8")
    (d / "test.fr.jsonl").write_text(json.dumps({"premise": "Il pleut.", "hypothesis": "Il fait sec.",
                                                 "label": "contradiction"}) + "\n", encoding="utf-8")
    items = load_mc(d)  # a folder: every file in it, format detected per file
    assert [(i["lang"], i["label"]) for i in items] == [("de", 1), ("fr", 2)]
    assert items[0]["choices"][1] == " Auch, Er ist da."
    sw = tmp_path / "plain.jsonl"
    sw.write_text(json.dumps({"premise": "a", "hypothesis": "b", "label": 0}) + "\n", encoding="utf-8")
    with pytest.raises(BloomchatError, match="no language.*--lang"):
        load_mc(sw)
    with pytest.raises(BloomchatError, match="no XNLI prompt words for language ja"):
        load_mc(sw, lang="ja")
    assert load_mc(sw, lang="sw")[0]["choices"][0] == " Ndiyo, b"
