"""File formats, users' layouts, rejects, the accounting invariant, filters, languages, errors, CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bloomchat.data import iter_user_jsonl, prepare
from bloomchat.data.records import open_records
from bloomchat.errors import BloomchatError

ZH = "<human>: 你好，请介绍一下北京。\n<bot>: 北京是中国的首都，有很多名胜古迹，例如故宫和长城。"
FR = "<human>: Bonjour, pouvez-vous me conseiller un livre ?\n<bot>: Je vous conseille « Le Petit Prince » de Saint-Exupéry."
EN = "<human>: Can you recommend a good book to read?\n<bot>: I recommend The Little Prince by Saint-Exupery."


def write_jsonl(path: Path, rows) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def cli(argv: list[str]) -> int:
    from bloomchat import cli as bcli

    return bcli.main(argv)


def test_user_layouts(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]}]},
        {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"},
                           {"from": "human", "value": "3+3?"}, {"from": "gpt", "value": "6"}], "id": "sg-1"},
        {"conversation": [{"role": "UTILISATEUR", "content": "Salut"}, {"role": "ASSISTANT", "content": "Bonjour !"}]},
        {"prompt": "", "completion": ZH},
        {"prompt": "Name a colour.", "completion": "Blue."},
        {"text": "<human>: Ping\n<bot>: Pong\n"},
        {"instruction": "Add.", "input": "1 and 2", "output": "3", "history": [["Hi", "Hello"]]},
        {"instruction": "Best reply?", "input": "", "output": ["first, preferred", "second"]},
        {"instruction": "Q?", "context": "", "response": "A.", "lang": "xx"},
    ]
    convs = list(iter_user_jsonl(write_jsonl(tmp_path / "mine.jsonl", rows)))
    assert [c.turns[0].text for c in convs] == ["You are terse.\nHi", "2+2?", "Salut", "你好，请介绍一下北京。",
                                                 "Name a colour.", "Ping", "Hi", "Best reply?", "Q?"]
    assert convs[0].text == "<human>: You are terse.\nHi\n<bot>: Hello."
    assert len(convs[1].turns) == 4 and convs[1].id == "mine.jsonl:sg-1"
    assert convs[3].text == ZH and convs[3].source == "user/mine"
    assert convs[5].text == "<human>: Ping\n<bot>: Pong"
    assert [t.text for t in convs[6].turns] == ["Hi", "Hello", "Add.\n1 and 2", "3"]
    assert convs[7].turns[1].text == "first, preferred"
    assert convs[8].lang == "xx"  # a record's own language is kept


def test_formats_gz_parquet_json_array(tmp_path):
    rows = [{"prompt": "", "completion": EN}, {"prompt": "", "completion": FR}]
    gz = write_jsonl(tmp_path / "a.jsonl.gz", rows)
    pqf = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pqf)
    arr = tmp_path / "c.json"
    arr.write_text("[\n  " + ",\n  ".join(json.dumps(r) for r in rows) + "\n]\n")
    for p in (gz, pqf, arr):
        assert [c.text for c in iter_user_jsonl(p)] == [EN, FR], p
    assert [r.line for r in open_records(arr)] == [2, 3]


def test_json_array_streams_across_buffer(tmp_path, monkeypatch):
    import bloomchat.data.records as records

    monkeypatch.setattr(records, "_CHUNK", 64)  # records longer than the buffer
    rows = [{"prompt": f"question {i} " + "x" * 150, "completion": f"answer {i}"} for i in range(20)]
    p = tmp_path / "big.json"
    p.write_text(json.dumps(rows, indent=1))
    got = list(open_records(p))
    assert [r.value for r in got] == rows
    assert got[1].line == 1 + 4 + 1  # '[', then 4 lines per element with indent=1


def test_rejects_accounting_and_where(tmp_path):
    p = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"prompt": "", "completion": EN}),
        "{not json",
        json.dumps({"prompt": "", "completion": 42}),
        "",
        json.dumps({"foo": "bar"}),
        json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}),
        json.dumps({"prompt": "", "completion": EN}),  # duplicate
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        json.dumps({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "?"}]}),
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}),
        json.dumps({"prompt": "long", "completion": "y" * 100}),
        json.dumps({"prompt": "", "completion": FR}),
    ]
    p.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe broken utf8\n")
    s = prepare(out=tmp_path / "o.jsonl", jsonl=[p], max_turn_chars=80, progress=False)
    (f,) = s["files"]
    assert f["lines_read"] == 12 and f["blank_lines"] == 1
    assert f["rejected"] == {"invalid UTF-8": 1, "malformed JSON": 1, "wrong layout": 1, "wrong type": 1, "wrong value": 1}
    assert f["filtered"] == {"duplicate": 1, "not_ending_with_bot": 1, "empty_turn": 1, "not_alternating": 1, "turn_too_long": 1}
    assert f["kept"] == 2 and f["balanced"] and s["conversations"] == 2
    rej = [json.loads(l) for l in (tmp_path / "o.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(":")[0]) for r in rej] == [
        (2, "malformed JSON"), (3, "wrong type"), (5, "wrong layout"), (6, "wrong value"), (13, "invalid UTF-8")]
    assert all(r["file"] == str(p) for r in rej)
    assert rej[3]["reason"] == "wrong value: messages[0].role is 'wizard'"


def test_each_filter_can_be_switched_off(tmp_path):
    p = write_jsonl(tmp_path / "f.jsonl", [
        {"prompt": "", "completion": EN}, {"prompt": "", "completion": EN},
        {"messages": [{"role": "user", "content": "q"}]},
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
    ])
    on = prepare(out=tmp_path / "on.jsonl", jsonl=[p], progress=False)
    off = prepare(out=tmp_path / "off.jsonl", jsonl=[p], dedup=False, bot_last=False, empty_turns=False, progress=False)
    assert on["conversations"] == 1 and off["conversations"] == 4
    assert on["filtered_conversations"] == {"duplicate": 1, "not_ending_with_bot": 1, "empty_turn": 1}


def test_language_keep_drop_cap_balance(tmp_path):
    rows = [{"prompt": "", "completion": t + f" ({i})"} for i in range(6) for t in (EN,)] + \
           [{"prompt": "", "completion": t + f" ({i})"} for i in range(3) for t in (ZH,)] + \
           [{"prompt": "", "completion": FR + " (1)"}]
    p = write_jsonl(tmp_path / "l.jsonl", rows)
    s = prepare(out=tmp_path / "a.jsonl", jsonl=[p], progress=False)
    assert s["by_lang"] == {"en": 6, "zh": 3, "fr": 1}
    s = prepare(out=tmp_path / "b.jsonl", jsonl=[p], keep_langs=["zh", "fr"], progress=False)
    assert s["by_lang"] == {"zh": 3, "fr": 1} and s["filtered_conversations"] == {"lang_not_kept": 6}
    s = prepare(out=tmp_path / "c.jsonl", jsonl=[p], drop_langs="en", progress=False)
    assert s["by_lang"] == {"zh": 3, "fr": 1}
    s = prepare(out=tmp_path / "d.jsonl", jsonl=[p], max_per_lang=2, progress=False)
    assert s["by_lang"] == {"en": 2, "zh": 2, "fr": 1} and s["filtered_conversations"] == {"lang_cap": 5}
    assert s["files"][0]["filtered"] == {"lang_cap": 5} and s["balanced"]
    s = prepare(out=tmp_path / "e.jsonl", jsonl=[p], balance_langs=True, progress=False)
    assert s["by_lang"] == {"en": 1, "zh": 1, "fr": 1}
    s = prepare(out=tmp_path / "f.jsonl", jsonl=[p], detect_lang=False, progress=False)
    assert s["by_lang"] == {"und": 10}
    assert json.loads((tmp_path / "f.jsonl").read_text().splitlines()[0])["lang"] is None


def test_user_errors_name_the_file(tmp_path):
    good = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "", "completion": EN}])
    with pytest.raises(BloomchatError, match="missing.jsonl: file not found"):
        prepare(out=tmp_path / "o.jsonl", jsonl=[good, tmp_path / "missing.jsonl"])
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(BloomchatError, match=r"x.csv: unknown format \(expected one of .jsonl"):
        prepare(out=tmp_path / "o.jsonl", jsonl=[tmp_path / "x.csv"])
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{oops", json.dumps({"a": 1})])
    with pytest.raises(BloomchatError, match="bad.jsonl: no usable line"):
        prepare(out=tmp_path / "o.jsonl", jsonl=[bad], progress=False)
    # the reasons are there, apart from the rejects of the last good run (there is none here)
    assert len((tmp_path / "o.rejects.failed.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "o.rejects.jsonl").exists()
    with pytest.raises(BloomchatError, match=r"o.jsonl.gz: prepare writes plain JSON Lines"):
        prepare(out=tmp_path / "o.jsonl.gz", jsonl=[good])
    with pytest.raises(BloomchatError, match="no input"):
        prepare(out=tmp_path / "o.jsonl")
    with pytest.raises(BloomchatError, match="unknown prepare option"):
        prepare(out=tmp_path / "o.jsonl", jsonl=[good], shufle=False)
    with pytest.raises(BloomchatError, match="language detector does not know qq"):
        prepare(out=tmp_path / "o.jsonl", jsonl=[good], lang_candidates=["en", "qq"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(BloomchatError, match="empty.jsonl: no usable line"):
        prepare(out=tmp_path / "o.jsonl", dolly=[empty], progress=False)
    assert not (tmp_path / "o.jsonl").exists()  # no half-written output
    assert not list(tmp_path.glob(".o.jsonl*"))  # temporary files cleaned up


def test_cli_prepare_and_one_line_errors(tmp_path, capsys):
    d = write_jsonl(tmp_path / "dolly.jsonl", [{"instruction": "Q1?", "context": "", "response": "A1."},
                                               {"instruction": "Q2?", "context": "C.", "response": "A2."}])
    o = write_jsonl(tmp_path / "oig.jsonl.gz", [{"text": "<human>: Hi\n<bot>: Hello", "metadata": {"source": "x"}}])
    out = tmp_path / "s.jsonl"
    rc = cli(["prepare", "-q", "--dolly", str(d), "--oig", str(o), "--seed", "3", "--no-langid", "-o", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "wrote 3 conversations" in text and "balanced" in text
    summary = json.loads((tmp_path / "s.summary.json").read_text())
    assert summary["seed"] == 3 and summary["options"]["detect_lang"] is False
    rc = cli(["prepare", "-q", "--jsonl", str(tmp_path / "nope.jsonl"), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "nope.jsonl: file not found" in err and "Traceback" not in err


def test_cli_from_recipe_stage(tmp_path, capsys):
    d = write_jsonl(tmp_path / "dolly.jsonl", [{"instruction": "Q1?", "context": "", "response": "A1."}])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: t\nbase_model: bigscience/bloom-560m\noutput_dir: runs\nseed: 7\n"
        "stages:\n  - name: s2\n    data:\n      dolly: [\"${dolly}\"]\n      prepare: {detect_lang: false}\n"
    )
    out = tmp_path / "r.jsonl"
    rc = cli(["prepare", "-q", "--recipe", str(recipe), "--stage", "s2", "--set", f"dolly={d}", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "r.summary.json").read_text())
    assert s["seed"] == 7 and s["conversations"] == 1 and s["options"]["detect_lang"] is False
    rc = cli(["prepare", "-q", "--recipe", str(recipe), "--stage", "nope", "--set", f"dolly={d}", "-o", str(out)])
    assert rc == 2 and "no stage named 'nope'" in capsys.readouterr().err
    # a preference stage's data are pairs: the error points to the verb that prepares them
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("", encoding="utf-8")
    recipe.write_text(recipe.read_text() + "  - name: p\n    kind: dpo\n    data:\n      pairs: [\"${pairs}\"]\n")
    rc = cli(["prepare", "-q", "--recipe", str(recipe), "--stage", "p", "--set", f"pairs={pairs}", "-o", str(out)])
    assert rc == 2 and "uses preference pairs (prepare them with `bloomchat prepare-pairs`)" in capsys.readouterr().err


def test_num_proc_gives_the_same_output(tmp_path):
    rows = [{"prompt": "", "completion": t + f" ({i})"} for i in range(40) for t in (EN, ZH, FR)]
    p = write_jsonl(tmp_path / "many.jsonl", rows)
    a = prepare(out=tmp_path / "a.jsonl", jsonl=[p], progress=False)
    b = prepare(out=tmp_path / "b.jsonl", jsonl=[p], num_proc=2, progress=False)
    assert a["by_lang"] == b["by_lang"] == {"en": 40, "zh": 40, "fr": 40}
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_lone_surrogate_escape_is_rejected(tmp_path):
    """Half a UTF-16 pair cannot be tokenised downstream: the line is rejected, the run goes on."""
    p = tmp_path / "s.jsonl"
    p.write_text('{"prompt": "", "completion": "<human>: bad \\ud800 char\\n<bot>: ok"}\n'
                 '{"prompt": "", "completion": "<human>: pair \\ud83d\\ude00\\n<bot>: fine"}\n', encoding="ascii")
    s = prepare(out=tmp_path / "o.jsonl", jsonl=[p], detect_lang=False, progress=False)
    assert s["conversations"] == 1 and s["files"][0]["rejected"] == {"invalid UTF-8": 1}
    (rec,) = [json.loads(l) for l in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rec["turns"][0]["text"] == "pair \U0001F600"
    assert json.loads((tmp_path / "o.rejects.jsonl").read_text(encoding="utf-8"))["line"] == 1
