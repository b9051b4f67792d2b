"""`bloomchat data-report`: JSON numbers match the prepared file; charts and HTML are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bloomchat.data import prepare
from bloomchat.data.report import data_report
from bloomchat.errors import BloomchatError


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_report_numbers_and_files(tmp_path):
    dolly = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "What is the capital of France?", "context": "", "response": "Paris is the capital of France."},
        {"instruction": "What is the capital of France?", "context": "", "response": "Paris is the capital of France."},
        {"instruction": "Name a planet.", "context": "", "response": "Mars is a planet of the solar system."},
    ])
    mine = write_jsonl(tmp_path / "m.jsonl", [
        {"messages": [{"role": "user", "content": "你好，请介绍一下北京。"}, {"role": "assistant", "content": "北京是中国的首都。"},
                      {"role": "user", "content": "还有呢？"}, {"role": "assistant", "content": "北京有故宫和长城。"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        "not an object",
    ])
    out = tmp_path / "p.jsonl"
    prepare(out=out, dolly=[dolly], jsonl=[mine], progress=False)
    rep = data_report(out, tmp_path / "rep")
    assert rep["conversations"] == 3
    assert rep["by_source"] == {"dolly": 2, "user/m": 1}
    assert rep["by_lang"] == {"en": 2, "zh": 1}
    assert rep["turns_per_conversation"] == {"2": 2, "4": 1}
    assert rep["chars"]["human_turn"]["n"] == 4 and rep["chars"]["bot_turn"]["max"] == len("Mars is a planet of the solar system.")
    assert rep["prepare"]["filtered_conversations"] == {"duplicate": 1, "not_ending_with_bot": 1}
    assert rep["prepare"]["rejected_lines"] == {"wrong layout": 1}
    names = sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert names == ["filters.png", "languages.png", "lengths.png", "report.html", "report.json", "sources.png", "turns.png"]
    for png in (tmp_path / "rep").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<img src='languages.png'" in html and "m.jsonl" in html
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["by_lang"] == {"en": 2, "zh": 1}


def test_report_errors(tmp_path):
    with pytest.raises(BloomchatError, match="file not found"):
        data_report(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "", "completion": "<human>: a\n<bot>: b"}) + "\n{broken\n")
    with pytest.raises(BloomchatError, match=r"bad.jsonl:2: not a prepared record"):
        data_report(bad)


def test_cli_data_report(tmp_path, capsys):
    from bloomchat import cli as bcli

    f = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "", "completion": "<human>: Hi\n<bot>: Hello"}])
    assert bcli.main(["data-report", str(f)]) == 0
    assert (tmp_path / "x.report" / "report.html").exists()
    assert "report.html" in capsys.readouterr().out


def test_cli_fertility_per_tokenizer(tmp_path, tiny_tokenizer_dir, capsys):
    from bloomchat import cli as bcli

    f = write_jsonl(tmp_path / "x.jsonl", [
        {"prompt": "", "completion": "<human>: Hello there my friend\n<bot>: Hello to you too", "lang": "en"},
        {"prompt": "", "completion": "<human>: 你好，请介绍一下北京。\n<bot>: 北京是中国的首都。", "lang": "zh"}])
    assert bcli.main(["data-report", str(f), "-o", str(tmp_path / "r"), "--tokenizer", str(tiny_tokenizer_dir)]) == 0
    fert = json.loads((tmp_path / "r" / "report.json").read_text())["fertility"]["by_tokenizer"][str(tiny_tokenizer_dir)]
    from bloomchat.data.report import count_units, fertility
    from bloomchat.models import load_tokenizer

    assert fert["zh"]["unit"] != fert["en"]["unit"]  # per character in Chinese, per word in English
    # the CLI's figures are the library's on the same texts and tokenizer
    tok = load_tokenizer(tiny_tokenizer_dir)
    en = fertility(tok, {"en": ["Hello there my friend", "Hello to you too"]})["en"]
    assert fert["en"]["units"] == en["units"] == 8 and fert["en"]["tokens"] == en["tokens"]
    assert count_units("北京是中国的首都。", "zh")[0] == fert["zh"]["units"] - len("你好，请介绍一下北京。")
    assert bcli.main(["data-report", str(f), "--tokenizer", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_failing_second_report_leaves_the_first_byte_identical(tmp_path, monkeypatch):
    from bloomchat.data import report

    f = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "", "completion": "<human>: Hi\n<bot>: Hello"}])
    data_report(f, tmp_path / "rep")
    before = {p.name: p.read_bytes() for p in (tmp_path / "rep").iterdir()}

    def broken(rep, summary, out):
        (out / "languages.png").write_bytes(b"half a chart")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "_charts", broken)
    with pytest.raises(OSError):
        data_report(f, tmp_path / "rep")
    assert {p.name: p.read_bytes() for p in (tmp_path / "rep").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep", "x.jsonl"]  # no temp folder left behind
