"""Fertility on known strings: units counted by hand, a byte tokenizer whose token counts are
known, a real tokenizer against transformers' own counts, data-report and eval compare."""

from __future__ import annotations

import json

import pytest

from bloomchat.data.report import count_units, fertility
from bloomchat.eval.fertility import FertilityTask


class ByteTok:
    """One token per UTF-8 byte: token counts known without running a tokenizer."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(t.encode("utf-8")) for t in texts]}


@pytest.mark.parametrize("text,lang,want", [
    ("The cat sat on the mat.", "en", (6, "word")),
    ("  Bonjour   le monde ", "fr", (3, "word")),
    ("我爱北京。", "zh", (5, "char")),
    ("我 爱 北京", "zh", (4, "char")),  # spaces are not characters of the text
    ("ฉันรัก คุณ", "th", (9, "char")),
    ("東京へ行く", "ja", (5, "char")),
])
def test_count_units(text, lang, want):
    assert count_units(text, lang) == want


def test_fertility_with_known_token_counts():
    got = fertility(ByteTok(), {"en": ["The cat sat.", "Hi there"], "zh": ["我爱北京。"]})
    # en: bytes 12 + 8 = 20 tokens over 3 + 2 words; zh: 15 bytes over 5 characters
    assert got["en"]["tokens"] == 20 and got["en"]["units"] == 5 and got["en"]["fertility"] == 4.0
    assert got["zh"] == {"texts": 1, "tokens": 15, "units": 5, "unit": "char", "fertility": 3.0,
                         "chars_per_token": round(5 / 15, 4)}


def test_fertility_task_ratio_of_sums_and_real_tokenizer(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    d = tmp_path / "flores"
    d.mkdir()
    (d / "devtest.en.txt").write_text("The cat sat.\nHello world, how are you today?\n", encoding="utf-8")
    (d / "devtest.zh.txt").write_text("我爱北京。\n北京是中国的首都。\n", encoding="utf-8")
    (d / "SOURCE.md").write_text("# not a language file\n", encoding="utf-8")
    task = FertilityTask(str(d))
    task._tok = ByteTok()
    recs = task.run_batch(None, task.examples())
    s = task.summarize(recs, bootstrap=0)
    assert set(s) == {"en", "zh"}  # words and characters are not pooled into "all"
    assert s["en"]["fertility"]["value"] == pytest.approx((12 + 31) / (3 + 6))
    assert s["zh"]["fertility"]["value"] == pytest.approx((15 + 27) / (5 + 9))
    # a real tokenizer: its counts are transformers' own, without special tokens
    real = FertilityTask(str(d), tokenizer=str(tiny_tokenizer_dir))
    recs = real.run_batch(None, real.examples())
    for ex, r in zip(real.examples(), recs):
        assert r["tokens"] == len(tiny_tokenizer(ex["text"], add_special_tokens=False)["input_ids"])


def test_fertility_cli_two_tokenizers_compared(tmp_path, micro_model_dir, monkeypatch, capsys):
    from bloomchat.cli import main

    d = tmp_path / "texts"
    d.mkdir()
    (d / "devtest.en.txt").write_text("".join(f"Sentence number {i} is here.\n" for i in range(8)), encoding="utf-8")
    (d / "devtest.zh.txt").write_text("".join(f"这是第{i}个句子。\n" for i in range(8)), encoding="utf-8")
    common = ["--task", "fertility", "--data", str(d), "--no-progress", "--bootstrap", "50"]
    assert main(["eval", "run", str(micro_model_dir), *common, "-o", str(tmp_path / "a")]) == 0
    res = json.loads((tmp_path / "a" / "results.json").read_text(encoding="utf-8"))
    entry = res["tasks"]["fertility-texts"]
    assert entry["units"] == {"en": "word", "zh": "char"}
    assert entry["metrics"]["zh"]["fertility"]["ci95"] is not None
    assert (tmp_path / "a" / "charts" / "fertility-texts.png").exists()
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "a"), "-o", str(tmp_path / "cmp")]) == 0
    assert "fertility" in (tmp_path / "cmp" / "compare.md").read_text(encoding="utf-8")


def test_data_report_fertility(tmp_path):
    from bloomchat.data.report import data_report

    f = tmp_path / "prepared.jsonl"
    recs = [{"id": "1", "source": "s", "lang": "en", "prompt": "", "completion": "",
             "turns": [{"role": "human", "text": "Hi there"}, {"role": "bot", "text": "Hello you all"}]},
            {"id": "2", "source": "s", "lang": "zh", "prompt": "", "completion": "",
             "turns": [{"role": "human", "text": "你好"}, {"role": "bot", "text": "你好！"}]}]
    from bloomchat.conversation import Conversation

    lines = []
    for r in recs:  # written the way prepare writes records
        conv = Conversation.from_record(r)
        lines.append(json.dumps(conv.to_record() if hasattr(conv, "to_record") else r, ensure_ascii=False))
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rep = data_report(f, tmp_path / "rep", tokenizers=[("bytes", ByteTok())])
    fz = rep["fertility"]["by_tokenizer"]["bytes"]
    assert fz["en"]["fertility"] == pytest.approx((8 + 13) / (2 + 3))
    assert fz["zh"]["fertility"] == pytest.approx((6 + 9) / (2 + 3)) and fz["zh"]["unit"] == "char"
    assert "Fertility" in (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
