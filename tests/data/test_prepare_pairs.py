"""Preference pairs: OASST1 rankings, users' layouts, the accounting invariant, rejects, CLI, real data."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from bloomchat.data.pairs import Pair
from bloomchat.data.prepare_pairs import prepare_pairs


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def msg(mid, parent, role, text, rank=None, lang="es", **kw):
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "rank": rank, "lang": lang,
            "message_tree_id": kw.pop("tree", "r1"), "deleted": False, "review_result": True, **kw}


def oasst_tree() -> list:
    """Root r1 (es) with 3 ranked replies a0 > a1 > a2 and one unranked; under a0 a follow-up p2 with
    2 replies tied at rank 0; under a1 a follow-up p3 with ranked b0 > b1 (a pair at depth 3);
    a deleted reply; a second tree r2 (fr) with a single reply; an orphan; a broken line."""
    return [
        msg("r1", None, "prompter", "¿Cómo hago pan?"),
        msg("a1", "r1", "assistant", "Con harina y agua.", 1),
        msg("a0", "r1", "assistant", "Mezcla harina, agua, sal y levadura; amasa y hornea.", 0),
        msg("a2", "r1", "assistant", "No sé.", 2),
        msg("ax", "r1", "assistant", "Compra pan.", None),
        msg("ad", "r1", "assistant", "borrado", 3, deleted=True),
        msg("p2", "a0", "prompter", "¿Cuánto tiempo?"),
        msg("t1", "p2", "assistant", "Una hora.", 0),
        msg("t2", "p2", "assistant", "Sesenta minutos.", 0),
        msg("p3", "a1", "prompter", "¿Y la sal?"),
        msg("b1", "p3", "assistant", "Nada.", 1),
        msg("b0", "p3", "assistant", "Una cucharadita por kilo.", 0),
        msg("r2", None, "prompter", "Bonjour, ça va ?", lang="fr", tree="r2"),
        msg("s1", "r2", "assistant", "Oui, merci !", 0, lang="fr", tree="r2"),
        msg("o1", "gone", "assistant", "orphan", 0),
        "{not json",
    ]


def test_oasst1_rankings_best_vs_rest_and_accounting(tmp_path):
    src = write_jsonl(tmp_path / "oasst.jsonl", oasst_tree())
    s = prepare_pairs(out=tmp_path / "pairs.jsonl", oasst1=[src], progress=False)
    pairs = [Pair.from_record(json.loads(x)) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    got = {(p.meta["chosen_id"], p.meta["rejected_id"]) for p in pairs}
    assert got == {("a0", "a1"), ("a0", "a2"), ("b0", "b1")}
    deep = next(p for p in pairs if p.meta["chosen_id"] == "b0")
    assert [(t.role, t.text) for t in deep.prompt] == [("human", "¿Cómo hago pan?"), ("bot", "Con harina y agua."),
                                                       ("human", "¿Y la sal?")]
    assert deep.chosen == "Una cucharadita por kilo." and deep.rejected == "Nada."
    assert all(p.lang == "es" and p.source == "oasst1" for p in pairs)
    f = s["files"][0]
    assert f["balanced"] and f["lines_read"] == 16
    # kept: r1 a0 a1 a2 p3 b0 b1; the rest each under its own reason
    assert f["kept"] == 7
    assert f["filtered"] == {"oasst_unranked": 1, "oasst_deleted": 1, "oasst_tied_best": 2,  # ax, ad, t1 t2
                             "oasst_no_pair_below": 2, "oasst_single_ranked": 1}  # p2 r2, s1
    assert f["rejected"] == {"orphan": 1, "malformed JSON": 1}
    rej = [json.loads(x) for x in (tmp_path / "pairs.rejects.jsonl").read_text().splitlines()]
    assert {(r["line"], r["reason"].split(":")[0]) for r in rej} == {(15, "orphan"), (16, "malformed JSON")}
    assert all(r["file"] == str(src) for r in rej)


def test_oasst1_best_vs_worst(tmp_path):
    src = write_jsonl(tmp_path / "oasst.jsonl", oasst_tree())
    s = prepare_pairs(out=tmp_path / "pairs.jsonl", oasst1=[src], pairing="best_vs_worst", progress=False)
    ids = [json.loads(x)["id"] for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert sorted(ids) == ["oasst1:a0>a2", "oasst1:b0>b1"]
    assert s["files"][0]["kept"] == 7 and s["balanced"]  # a1, the middle reply, is the prompt of b0>b1
    no_p3 = [m for m in oasst_tree() if not (isinstance(m, dict) and m["message_id"] in ("p3", "b0", "b1"))]
    s = prepare_pairs(out=tmp_path / "pairs.jsonl", oasst1=[write_jsonl(tmp_path / "o2.jsonl", no_p3)],
                      pairing="best_vs_worst", progress=False)
    assert s["pairs"] == 1 and s["files"][0]["filtered"]["oasst_middle_rank"] == 1 and s["balanced"]


USER_ROWS = [
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "lang": "en"},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
     "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}], "id": 7},
    {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
     "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]},
    {"instruction": "布洛芬和对乙酰氨基酚的区别是？", "input": "", "history": [["你好", "你好！"]],
     "output": ["最好的回答。", "第二个回答。", "第三个。"]},
    {"instruction": "Translate", "input": "chat", "chosen": "cat", "rejected": "dog"},
    {"conversations": [{"from": "human", "value": "Salut"}], "chosen": {"from": "gpt", "value": "Bonjour !"},
     "rejected": {"from": "gpt", "value": "Non."}},
    {"prompt": "Same?", "chosen": "yes", "rejected": " yes "},                       # filtered: same_reply
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},       # filtered: duplicate
    {"chosen": "just text", "rejected": "other text"},                               # rejected: no prompt
    {"instruction": "x", "output": ["only one"]},                                    # rejected: one reply
    {"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
     "rejected": "c"},                                                               # rejected: two messages
    [1, 2],                                                                          # rejected: not an object
]


def test_user_layouts_pairs_and_rejects(tmp_path):
    src = write_jsonl(tmp_path / "mine.jsonl", USER_ROWS)
    s = prepare_pairs(out=tmp_path / "p.jsonl", jsonl=[src], progress=False)
    pairs = [Pair.from_record(json.loads(x)) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    flat = [([t.text for t in p.prompt], p.chosen, p.rejected) for p in pairs]
    assert flat == [
        (["Capital of France?"], "Paris.", "Lyon."),
        (["Be brief.\n2+2?"], "4", "5"),
        (["Hi"], "Hello!", "Go away."),
        (["你好", "你好！", "布洛芬和对乙酰氨基酚的区别是？"], "最好的回答。", "第二个回答。"),
        (["你好", "你好！", "布洛芬和对乙酰氨基酚的区别是？"], "最好的回答。", "第三个。"),
        (["Translate\nchat"], "cat", "dog"),
        (["Salut"], "Bonjour !", "Non."),
    ]
    assert pairs[0].lang == "en" and pairs[3].lang == "zh" and pairs[6].lang == "fr"  # given, then detected
    assert pairs[1].id == "mine.jsonl:7" and pairs[3].id == "mine.jsonl:4#1" and pairs[4].id == "mine.jsonl:4#2"
    assert all(p.source == "user/mine" for p in pairs)
    f = s["files"][0]
    assert (f["lines_read"], f["kept"], f["filtered"]) == (12, 6, {"same_reply": 1, "duplicate": 1})
    assert sum(f["rejected"].values()) == 4 and f["balanced"]
    assert s["filtered_pairs"] == {"same_reply": 1, "duplicate": 1}
    lines = sorted(json.loads(x)["line"] for x in (tmp_path / "p.rejects.jsonl").read_text().splitlines())
    assert lines == [9, 10, 11, 12]


def test_keep_lang_and_no_usable_line(tmp_path):
    from bloomchat.errors import BloomchatError

    src = write_jsonl(tmp_path / "oasst.jsonl", oasst_tree())
    s = prepare_pairs(out=tmp_path / "p.jsonl", oasst1=[src], keep_langs=["fr"], progress=False)
    assert s["pairs"] == 0 and s["filtered_pairs"] == {"lang_not_kept": 3} and s["balanced"]
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{oops", {"nothing": 1}])
    with pytest.raises(BloomchatError, match="no usable line"):
        prepare_pairs(out=tmp_path / "q.jsonl", jsonl=[bad], progress=False)
    assert not (tmp_path / "q.jsonl").exists()


def test_cli_prepare_pairs(tmp_path, capsys):
    from bloomchat.cli import main

    src = write_jsonl(tmp_path / "mine.jsonl", USER_ROWS[:3])
    assert main(["prepare-pairs", "--jsonl", str(src), "-o", str(tmp_path / "o.jsonl"), "-q"]) == 0
    assert "wrote 3 pairs" in capsys.readouterr().out
    assert main(["prepare-pairs", "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no input" in err


def test_real_oasst1_and_llamafactory_rm(shared_data, tmp_path):
    oasst = shared_data("oasst1", "oasst1_validation_en.messages.jsonl")
    rm = shared_data("llamafactory_demo_zh_en", "oaast_rm_zh.json")
    s = prepare_pairs(out=tmp_path / "p.jsonl", oasst1=[oasst], jsonl=[rm], progress=False)
    assert s["balanced"] and all(f["balanced"] for f in s["files"])
    msgs = {m["message_id"]: m for m in map(json.loads, oasst.read_text(encoding="utf-8").splitlines())}
    pairs = [Pair.from_record(json.loads(x)) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    per_prompt = defaultdict(set)
    for p in (p for p in pairs if p.source == "oasst1"):
        c, r = msgs[p.meta["chosen_id"]], msgs[p.meta["rejected_id"]]
        assert c["parent_id"] == r["parent_id"] and c["rank"] < r["rank"]  # siblings, crowd order
        assert p.prompt[-1].text == msgs[c["parent_id"]]["text"].strip() and p.lang == "en"
        per_prompt[c["parent_id"]].add(c["message_id"])
    assert all(len(v) == 1 for v in per_prompt.values())  # one best reply per ranking
    assert len(per_prompt) > 100
    assert s["by_lang"]["zh"] > 1000 and s["by_source"]["oasst1"] > len(per_prompt)  # best vs each worse


def test_real_llamafactory_rm_pairs_exact(shared_data, tmp_path):
    rm = shared_data("llamafactory_demo_zh_en", "oaast_rm_zh.json")
    s = prepare_pairs(out=tmp_path / "p.jsonl", jsonl=[rm], progress=False)
    rows = json.loads(rm.read_text(encoding="utf-8"))
    assert s["pairs"] == sum(len(r["output"]) - 1 for r in rows) - sum(s["filtered_pairs"].values())
    first = Pair.from_record(json.loads((tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()[0]))
    assert first.prompt[-1].text == rows[0]["instruction"] and first.chosen == rows[0]["output"][0].strip()
    assert first.rejected == rows[0]["output"][1].strip() and s["balanced"]
