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
