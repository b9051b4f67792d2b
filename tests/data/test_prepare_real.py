"""Real public data (../shared/data): exact counts and exact texts of chosen records."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bloomchat.data import iter_oasst1, iter_oig, prepare

pytestmark = pytest.mark.shared_data


def recs(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def stage2(shared_data, tmp_path_factory):
    """BLOOMChat stage 2 inputs (OASST1 en validation + Dolly-15k) with the default filters."""
    out = tmp_path_factory.mktemp("stage2") / "stage2.jsonl"
    s = prepare(out=out, oasst1=[shared_data("oasst1", "oasst1_validation_en.messages.jsonl")],
                dolly=[shared_data("dolly15k", "databricks-dolly-15k.from-docx.jsonl")], progress=False)
    return s, out


def test_stage2_counts_and_accounting(stage2):
    s, out = stage2
    dolly, oasst = (next(f for f in s["files"] if f["kind"] == k) for k in ("dolly", "oasst1"))
    assert (dolly["lines_read"], dolly["kept"], dolly["filtered"]) == (15015, 14951, {"duplicate": 15, "turn_too_long": 49})
    # 2,022 messages: 188 best paths; 125 end with a bot reply (420 messages), 63 end with a prompt
    # (263 messages), 1,336 messages on other branches, 3 orphans (parent in another language)
    assert (oasst["lines_read"], oasst["kept"], oasst["rejected"]) == (2022, 420, {"orphan": 3})
    assert oasst["filtered"] == {"not_ending_with_bot": 263, "oasst_other_branch": 1336}
    assert s["balanced"] and s["by_source"] == {"dolly": 14951, "oasst1": 125}
    assert s["filtered_conversations"] == {"not_ending_with_bot": 63, "turn_too_long": 49, "duplicate": 15}
    assert s["by_lang"]["en"] == 14923 + 125
    assert len(out.read_text().splitlines()) == 15076
    rej = [json.loads(l) for l in Path(s["rejects"]).read_text().splitlines()]
    assert [r["line"] for r in rej] == [153, 215, 1670]
    assert rej[0]["reason"] == "orphan: parent_id 3aeb9373-da93-4858-84f4-5e398fe9e131 is not in the file"


def test_stage2_exact_texts(stage2):
    _, out = stage2
    by_id = {r["id"]: r for r in recs(out)}
    d1 = by_id["databricks-dolly-15k.from-docx.jsonl:1"]  # with context
    assert d1["completion"].startswith(
        "<human>: When did Virgin Australia start operating?\nVirgin Australia, the trading name of Virgin "
        "Australia Airlines Pty Ltd, is an Australian-based airline.")
    assert d1["completion"].endswith(
        "\n<bot>: Virgin Australia commenced services on 31 August 2000 as Virgin Blue, with two aircraft on a single route.")
    assert by_id["databricks-dolly-15k.from-docx.jsonl:3"]["completion"] == (
        "<human>: Why can camels survive for long without water?\n<bot>: Camels use the fat in their humps to "
        "keep them filled with energy and hydration for long periods of time.")
    o = by_id["oasst1:e0cf4fa2-e944-44fb-b502-11f155062092"]
    assert o["completion"].startswith("<human>: What do you think about ChatGPT?\n<bot>: As an open source "
                                      "alternative to ChatGPT, I do not have personal opinions.")
    assert [t["role"] for t in o["turns"]] == ["human", "bot", "human", "bot"] and o["lang"] == "en"


def test_oasst1_without_filters_is_bloomchat(shared_data, tmp_path):
    p = shared_data("oasst1", "oasst1_validation_en.messages.jsonl")
    convs = list(iter_oasst1(p))
    assert len(convs) == 188 and Counter(len(c.turns) for c in convs)[1] == 0
    s = prepare(out=tmp_path / "o.jsonl", oasst1=[p], filters=False, progress=False)
    assert s["conversations"] == 188 and s["files"][0]["kept"] == 683 and s["balanced"]


def test_oig_joke_explanations_rosey(shared_data, tmp_path):
    p = shared_data("oig_joke_explanations", "unified_joke_explanations.jsonl")
    convs = list(iter_oig(p))
    assert len(convs) == 356
    assert all([t.role for t in c.turns] == ["human", "bot"] for c in convs)
    assert convs[0].text.startswith("<human>: Why is this joke funny? Q: What does a computer do when it is tired? "
                                    "A: It crashes!\nRosey: Did your computer ever stop working (freeze)")
    assert convs[0].text.endswith("unless you saved it. Thankfully, they do not happen too often.\n")
    assert convs[0].turns[1].text.startswith("Did your computer ever stop working")
    s = prepare(out=tmp_path / "j.jsonl", oig=[p], per_source=100, normalize_tags=True, progress=False)
    assert s["conversations"] == 100 and s["files"][0]["stopped_after"] == 100 and s["by_lang"] == {"en": 100}
    assert all("\n<bot>: " in r["completion"] and "Rosey:" not in r["completion"] for r in recs(tmp_path / "j.jsonl"))


def test_vigogne_french_conversation_layout(shared_data, tmp_path):
    out = tmp_path / "fr.jsonl"
    s = prepare(out=out, jsonl=[shared_data("oasst1_fr_vigogne", "oasst_20230412_fr_1k.jsonl")], shuffle=False,
                progress=False)
    assert (s["conversations"], s["filtered_conversations"]) == (1176, {"duplicate": 7})
    assert s["by_lang"]["fr"] == 1164 and s["balanced"]
    r = {x["id"]: x for x in recs(out)}["oasst_20230412_fr_1k.jsonl:oasst-20230412-fr-00000111"]
    assert len(r["turns"]) == 6 and r["turns"][0]["text"].startswith("Ecris moi un programme en tant qu'expert")
    assert recs(out)[0]["completion"].startswith(
        "<human>: Quelle est la différence entre un disque dur HDD et un SSD ?\n<bot>: La différence entre un "
        "disque dur HDD (Hard Disk Drive) et un disque SSD (Solid State Drive) réside dans la technologie")


def test_llamafactory_alpaca_json_arrays(shared_data, tmp_path):
    d = "llamafactory_demo_zh_en"
    out = tmp_path / "zh.jsonl"
    s = prepare(out=out, jsonl=[shared_data(d, "alpaca_zh_demo.json"), shared_data(d, "oaast_sft_zh.json"),
                                shared_data(d, "oaast_rm_zh.json")], shuffle=False, keep_langs=["zh"], progress=False)
    files = {Path(f["path"]).name: f for f in s["files"]}
    assert [files[n]["lines_read"] for n in ("alpaca_zh_demo.json", "oaast_sft_zh.json", "oaast_rm_zh.json")] == [1000, 689, 775]
    assert s["by_lang"] == {"zh": s["conversations"]} and s["balanced"]
    by_id = {r["id"]: r for r in recs(out)}
    # element 1 of the array starts on line 2; its text verbatim
    assert by_id["alpaca_zh_demo.json:2"]["completion"].startswith(
        "<human>: 识别并解释给定列表中的两个科学理论：细胞理论和日心说。\n<bot>: 细胞理论是生物科学的一个理论")
    # history becomes earlier turns
    h = by_id["oaast_sft_zh.json:62"]["turns"]
    assert [t["text"] for t in h[::2]] == ["我需要举办6人晚宴。你能帮我推荐三道不包括坚果或海鲜的菜吗？", "谢谢"]
    assert h[-1] == {"role": "bot", "text": "不客气！祝您晚宴愉快！"}
