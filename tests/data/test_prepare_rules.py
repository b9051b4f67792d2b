"""BLOOMChat's exact data rules (OIG, Dolly, OASST1) on realistic synthetic files."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from bloomchat.conversation import Conversation
from bloomchat.data import iter_dolly, iter_oasst1, prepare


def write_jsonl(path: Path, rows) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def read_out(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines()]


def chip2_rows(n: int, start: int = 0) -> list[dict]:
    """chip2-like OIG items: single or multi-turn, some with surrounding whitespace."""
    rows = []
    for i in range(start, start + n):
        if i % 3 == 0:
            text = f"<human>: What is {i} plus {i}?\n<bot>: {i} plus {i} is {2 * i}."
        elif i % 3 == 1:
            text = f"  <human>: Tell me a fact about the number {i}.\n<bot>: {i} is {'even' if i % 2 == 0 else 'odd'}.\n<human>: Thanks!\n<bot>: You're welcome.\n\n"
        else:
            text = f"<human>: Translate 'cat {i}' to French.\n<bot>: chat {i}\n"
        rows.append({"text": text, "metadata": {"source": "unified_chip2"}})
    return rows


@pytest.fixture
def oig_files(tmp_path):
    chip2 = chip2_rows(10)
    # items 3 and 7 come from prosocial: skipped, yet they count towards the per-file N
    chip2[3] = {"text": "<human>: How do I pick a lock?\n<bot>: I can't help with that.", "metadata": {"source": "prosocial"}}
    chip2[7] = {"text": "<human>: Is it OK to lie?\n<bot>: Honesty matters.", "metadata": {"source": "prosocial"}}
    basic = [
        {"text": "<human>: Who are you?\n<bot>: I am an open-source chat assistant.", "metadata": {"source": "unified_basic"}},
        {"text": "<human>: Hi\n<bot>: Hello! How can I help you today?", "metadata": {"source": "unified_basic"}},
    ]
    jokes = [
        {"text": "<human>: Why is this joke funny? Q: Why did the chicken cross the road? A: To get to the other side.\nRosey: It subverts the expectation of a clever punchline.", "metadata": {"source": "unified_joke_explanations"}},
    ]
    return (
        write_jsonl(tmp_path / "unified_chip2.jsonl", chip2),
        write_jsonl(tmp_path / "unified_basic.jsonl", basic),
        write_jsonl(tmp_path / "unified_joke_explanations.jsonl", jokes),
    )


def bloomchat_oig(files: list[Path], n: int) -> list[str]:
    """BLOOMChat data_prep/subsample_openchatkit.py, ported (per-file cap n, no shuffle)."""
    items = []
    for p in files:
        for ii, line in enumerate(p.read_text().splitlines()):
            if ii >= n:
                break
            item = json.loads(line)
            if "meta" in item and item["meta"]["source"] == "prosocial":  # only `meta`, as the script
                continue
            new = item["text"].strip() + "\n"
            if p.name == "unified_basic.jsonl":
                items += [new] * 1000
            items.append(new)
    return items


def test_oig_matches_bloomchat_script_exactly(tmp_path, oig_files):
    out = tmp_path / "stage1.jsonl"
    s = prepare(out=out, oig=list(oig_files), per_source=6, filters=False, prosocial_check="meta", progress=False)
    got = [r["completion"] for r in read_out(out)]
    assert Counter(got) == Counter(bloomchat_oig(list(oig_files), 6))
    # the script reads `meta` only: the `metadata` prosocial item 3 is kept
    chip2 = next(f for f in s["files"] if f["path"].endswith("unified_chip2.jsonl"))
    assert (chip2["lines_read"], chip2["kept"], chip2["filtered"], chip2["stopped_after"]) == (6, 6, {}, 6)
    assert s["conversations"] == 6 + 2002 + 1
    # default: per_source 6 on chip2: items 0..5 read, item 3 (prosocial) skipped -> 5 kept, 4 lines never read
    s = prepare(out=out, oig=list(oig_files), per_source=6, filters=False, progress=False)
    chip2 = next(f for f in s["files"] if f["path"].endswith("unified_chip2.jsonl"))
    assert (chip2["lines_read"], chip2["kept"], chip2["filtered"], chip2["stopped_after"]) == (6, 5, {"prosocial": 1}, 6)
    basic = next(f for f in s["files"] if f["path"].endswith("unified_basic.jsonl"))
    assert basic["kept"] == 2 and basic["conversations_out"] == 2 * 1001
    assert s["conversations"] == 5 + 2002 + 1
    assert all(f["balanced"] for f in s["files"])


def test_oig_text_rules_and_rosey(tmp_path, oig_files):
    out = tmp_path / "o.jsonl"
    prepare(out=out, oig=list(oig_files), progress=False)
    recs = read_out(out)
    by_id = {r["id"]: r for r in recs}
    # stripped, exactly one trailing newline, kept verbatim
    r = by_id["unified_chip2.jsonl:2"]
    assert r["completion"] == "<human>: Tell me a fact about the number 1.\n<bot>: 1 is odd.\n<human>: Thanks!\n<bot>: You're welcome.\n"
    assert [t["role"] for t in r["turns"]] == ["human", "bot", "human", "bot"]
    assert r["source"] == "oig/unified_chip2" and r["prompt"] == ""
    # Rosey: kept in the text, read as a bot turn
    j = by_id["unified_joke_explanations.jsonl:1"]
    assert "\nRosey: It subverts" in j["completion"]
    assert j["turns"][1] == {"role": "bot", "text": "It subverts the expectation of a clever punchline."}
    assert Conversation.from_record(j).turns[1].role == "bot"
    # prosocial never appears; unified_basic items appear 1001 times, with distinct ids
    assert not any("pick a lock" in r["completion"] for r in recs)
    basic = [r for r in recs if r["source"] == "oig/unified_basic"]
    assert len(basic) == 2002 and len({r["id"] for r in basic}) == 2002
    assert Counter(r["completion"] for r in basic)["<human>: Hi\n<bot>: Hello! How can I help you today?\n"] == 1001


def test_normalize_tags(tmp_path, oig_files):
    out = tmp_path / "n.jsonl"
    prepare(out=out, oig=[oig_files[2]], normalize_tags=True, progress=False)
    (r,) = read_out(out)
    assert "Rosey:" not in r["completion"] and "\n<bot>: It subverts" in r["completion"]


def test_shuffle_is_seeded(tmp_path, oig_files):
    a, b, c = (tmp_path / f"{x}.jsonl" for x in "abc")
    prepare(out=a, oig=list(oig_files), basic_repeat=3, seed=1, progress=False)
    prepare(out=b, oig=list(oig_files), basic_repeat=3, seed=1, progress=False)
    prepare(out=c, oig=list(oig_files), basic_repeat=3, seed=2, progress=False)
    assert a.read_text() == b.read_text()
    assert a.read_text() != c.read_text()
    assert sorted(a.read_text().splitlines()) == sorted(c.read_text().splitlines())
    prepare(out=c, oig=list(oig_files), basic_repeat=3, shuffle=False, progress=False)
    ids = [r["id"] for r in read_out(c)]
    assert ids[:3] == ["unified_chip2.jsonl:1", "unified_chip2.jsonl:2", "unified_chip2.jsonl:3"]


def test_dolly_with_and_without_context(tmp_path):
    p = write_jsonl(tmp_path / "dolly.jsonl", [
        {"instruction": "What is the capital of France?", "context": "", "response": "Paris.", "category": "open_qa"},
        {"instruction": "Summarise the text.", "context": "The cat sat on the mat.\nIt was happy.", "response": "A happy cat sat.", "category": "summarization"},
    ])
    c1, c2 = iter_dolly(p)
    assert c1.text == "<human>: What is the capital of France?\n<bot>: Paris."
    assert c2.text == "<human>: Summarise the text.\nThe cat sat on the mat.\nIt was happy.\n<bot>: A happy cat sat."
    assert c2.turns[0].text == "Summarise the text.\nThe cat sat on the mat.\nIt was happy."
    assert c1.meta == {"category": "open_qa"}


def oasst_msg(mid, parent, role, text, plus=0, minus=0, lang="en"):
    names, counts = [], []
    if plus:
        names.append("+1"), counts.append(plus)
    if minus:
        names.append("-1"), counts.append(minus)
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "lang": lang,
            "emojis": {"name": names, "count": counts} if names else None, "rank": None}


def oasst_messages():
    """Two trees. Tree A: the best reply by +1 minus -1 (a2: 5-3=2 beats a1: 1, ties a3: 2 but later)."""
    return [
        oasst_msg("A", None, "prompter", "  Explain gravity.", plus=3),
        oasst_msg("a1", "A", "assistant", "Gravity pulls.", plus=1),
        oasst_msg("a2", "A", "assistant", "Gravity is a force of attraction.", plus=5, minus=3),
        oasst_msg("a3", "A", "assistant", "Tied with a2 but later.", plus=2),
        oasst_msg("a2p", "a2", "prompter", "Why?"),
        oasst_msg("a2pa", "a2p", "assistant", "Because of mass.  \n"),
        oasst_msg("a1p", "a1", "prompter", "Not on the path."),
        oasst_msg("B", None, "prompter", "¿Qué hora es?", lang="es"),
        oasst_msg("b1", "B", "assistant", "No lo sé.", minus=1, lang="es"),
        oasst_msg("b2", "B", "assistant", "Son las tres.", lang="es"),
        oasst_msg("X", "missing-parent", "assistant", "An orphan."),
        oasst_msg("Xc", "X", "prompter", "Child of an orphan."),
    ]


def bloomchat_oasst(messages: list[dict]) -> list[str]:
    """BLOOMChat data_prep/prepare_oa_dolly.py (OASST1 part), ported; orphans skipped (it would crash)."""
    id_to_item = {m["message_id"]: dict(m) for m in messages}
    for m in id_to_item.values():
        if m["parent_id"] is not None and m["parent_id"] in id_to_item:
            id_to_item[m["parent_id"]].setdefault("child_ids", []).append(m["message_id"])

    def key(item):
        e = item["emojis"]
        if e is None:
            return 0
        s = 0
        if "+1" in e["name"]:
            s += e["count"][e["name"].index("+1")]
        if "-1" in e["name"]:
            s -= e["count"][e["name"].index("-1")]
        return s

    def route(item):
        if not item.get("child_ids"):
            return []
        best = max((id_to_item[c] for c in item["child_ids"]), key=key)
        return [best] + route(best)

    texts = []
    for m in id_to_item.values():
        if m["parent_id"] is None:
            text = ""
            for it in [m] + route(m):
                text += f"\n<bot>: {it['text']}" if it["role"] == "assistant" else f"\n<human>: {it['text']}"
            texts.append(text.strip())
    return texts


def test_oasst_message_level_best_path_and_orphans(tmp_path):
    msgs = oasst_messages()
    p = write_jsonl(tmp_path / "oasst.jsonl", msgs)
    a, b = iter_oasst1(p)
    assert a.text == "<human>:   Explain gravity.\n<bot>: Gravity is a force of attraction.\n<human>: Why?\n<bot>: Because of mass."
    assert [t.text for t in a.turns] == ["Explain gravity.", "Gravity is a force of attraction.", "Why?", "Because of mass."]
    assert (a.lang, b.lang) == ("en", "es")  # OASST1's own lang is kept
    assert b.turns[1].text == "Son las tres."  # 0 beats -1
    out = tmp_path / "o.jsonl"
    s = prepare(out=out, oasst1=[p], filters=False, shuffle=False, progress=False)
    assert [r["completion"] for r in read_out(out)] == bloomchat_oasst(msgs)
    (f,) = s["files"]
    assert f["lines_read"] == 12 and f["kept"] == 4 + 2
    assert f["filtered"] == {"oasst_other_branch": 4}  # a1, a3, a1p, b1
    assert f["rejected"] == {"orphan": 1, "orphan_descendant": 1} and f["balanced"]
    rej = [json.loads(l) for l in (tmp_path / "o.rejects.jsonl").read_text().splitlines()]
    assert {(r["line"], r["reason"].split(":")[0]) for r in rej} == {(11, "orphan"), (12, "orphan_descendant")}
    assert "missing-parent" in rej[0]["reason"] and rej[0]["file"] == str(p)


def test_oasst_parent_cycle_is_rejected_not_lost(tmp_path):
    msgs = oasst_messages()[:3] + [oasst_msg("C1", "C2", "prompter", "Loop one?"),
                                   oasst_msg("C2", "C1", "assistant", "Loop two."),
                                   oasst_msg("C3", "C2", "prompter", "Under the loop.")]
    p = write_jsonl(tmp_path / "oasst.jsonl", msgs)
    s = prepare(out=tmp_path / "o.jsonl", oasst1=[p], filters=False, progress=False)
    (f,) = s["files"]
    assert f["balanced"] and f["lines_read"] == 6 and f["rejected"] == {"cycle": 3}
    rej = [json.loads(l) for l in (tmp_path / "o.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(":")[0]) for r in rej] == [(4, "cycle"), (5, "cycle"), (6, "cycle")]


def to_tree(msgs: list[dict], root: str) -> dict:
    by = {m["message_id"]: dict(m) for m in msgs}
    for m in msgs:
        if m["parent_id"] in by:
            by[m["parent_id"]].setdefault("replies", []).append(by[m["message_id"]])
    return {"message_tree_id": root, "tree_state": "ready_for_export", "prompt": by[root]}


def test_oasst_tree_export_gives_the_same_conversations(tmp_path):
    msgs = oasst_messages()[:10]
    flat = write_jsonl(tmp_path / "m.jsonl", msgs)
    trees = write_jsonl(tmp_path / "trees.jsonl", [to_tree(msgs, "A"), to_tree(msgs, "B")])
    assert [c.text for c in iter_oasst1(trees)] == [c.text for c in iter_oasst1(flat)]
    assert [c.lang for c in iter_oasst1(trees)] == ["en", "es"]


def test_oasst_human_last_path_is_filtered_by_default(tmp_path):
    p = write_jsonl(tmp_path / "o.jsonl", [oasst_msg("R", None, "prompter", "Hello?"),
                                            oasst_msg("R1", None, "prompter", "Anyone?"),
                                            oasst_msg("R1a", "R1", "assistant", "Yes.")])
    s = prepare(out=tmp_path / "x.jsonl", oasst1=[p], progress=False)
    assert s["conversations"] == 1 and s["filtered_conversations"] == {"not_ending_with_bot": 1}
    assert s["files"][0]["filtered"] == {"not_ending_with_bot": 1} and s["files"][0]["kept"] == 2


def test_stage2_matches_bloomchat_script(tmp_path):
    """OASST1 + Dolly with filters off: the same multiset of texts as prepare_oa_dolly.py."""
    msgs = oasst_messages()[:10]
    rng = random.Random(0)
    dolly = [{"instruction": f"Question {i}?", "context": "" if rng.random() < 0.6 else f"Context {i}.",
              "response": f"Answer {i}.", "category": None} for i in range(30)]
    po, pd = write_jsonl(tmp_path / "o.jsonl", msgs), write_jsonl(tmp_path / "d.jsonl", dolly)
    out = tmp_path / "s2.jsonl"
    prepare(out=out, oasst1=[po], dolly=[pd], filters=False, progress=False)
    expected = bloomchat_oasst(msgs) + [
        f"<human>: {d['instruction']}\n<bot>: {d['response']}" if d["context"] == ""
        else f"<human>: {d['instruction']}\n{d['context']}\n<bot>: {d['response']}" for d in dolly
    ]
    assert Counter(r["completion"] for r in read_out(out)) == Counter(expected)


def test_all_prosocial_file_is_counted_not_an_error(tmp_path, oig_files):
    pro = write_jsonl(tmp_path / "unified_prosocial.jsonl", [
        {"text": f"<human>: Risky question {i}?\n<bot>: Careful answer {i}.", "metadata": {"source": "prosocial"}} for i in range(4)])
    s = prepare(out=tmp_path / "o.jsonl", oig=[oig_files[0], pro], progress=False)
    f = next(f for f in s["files"] if f["path"] == str(pro))
    assert (f["lines_read"], f["kept"], f["filtered"], f["conversations_out"]) == (4, 0, {"prosocial": 4}, 0)


def test_oasst_parquet_like_the_hub_export(tmp_path):
    """OASST1 as the Hugging Face parquet (emojis a struct of lists) reads like the JSONL."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    msgs = oasst_messages()[:10]
    p = tmp_path / "oasst1-validation.parquet"
    pq.write_table(pa.Table.from_pylist(msgs), p)
    flat = write_jsonl(tmp_path / "m.jsonl", msgs)
    assert [c.text for c in iter_oasst1(p)] == [c.text for c in iter_oasst1(flat)]


def test_rejects_path_option_and_output_not_an_input(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Q?", "context": "", "response": "A."}, "[1, 2]"])
    s = prepare(out=tmp_path / "o.jsonl", dolly=[p], rejects=tmp_path / "bad-lines.jsonl", progress=False)
    (r,) = [json.loads(l) for l in (tmp_path / "bad-lines.jsonl").read_text().splitlines()]
    assert r == {"file": str(p), "line": 2, "reason": "wrong layout: line is a JSON list, expected an object", "record": "[1, 2]"}
    assert s["rejects"] == str(tmp_path / "bad-lines.jsonl") and not (tmp_path / "o.rejects.jsonl").exists()
    from bloomchat.errors import BloomchatError

    with pytest.raises(BloomchatError, match="also an input"):
        prepare(out=p, dolly=[p], progress=False)
    assert len(p.read_text().splitlines()) == 2
