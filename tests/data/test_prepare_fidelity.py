"""BLOOMChat fidelity options of prepare (prosocial check, OASST1 split) and failed runs that
leave the previous outputs byte-identical."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bloomchat.data import prepare, rejects_path, summary_path
from bloomchat.errors import BloomchatError

from test_prepare_rules import oasst_messages, read_out, write_jsonl


def oig_line(text: str, source: str, key: str = "metadata") -> dict:
    """One OIG unified_*.jsonl line, in the layout of OIG's files ({"text", "metadata": {"source"}})."""
    return {"text": text, key: {"source": source}}


def bloomchat_subsample(files: list[Path], n: int) -> list[str]:
    """sambanova/bloomchat data_prep/subsample_openchatkit.py@7399370 lines 57-77, ported line for line
    (the datasets loader yields each JSON line's own keys, so `item` is the parsed line)."""
    all_items = []
    for p in files:
        for ii, line in enumerate(p.read_text().splitlines()):
            item = json.loads(line)
            if ii >= n:
                break
            if "meta" in item:
                if item["meta"]["source"] == "prosocial":
                    continue
            new_item = item["text"].strip() + "\n"
            if p.name == "unified_basic.jsonl":
                for _ in range(1000):
                    all_items.append(new_item)
            all_items.append(new_item)
    return all_items


@pytest.fixture
def oig_prosocial(tmp_path):
    rows = [
        oig_line("<human>: How do I bake bread?\n<bot>: Mix flour, water, salt and yeast.", "unified_chip2"),
        oig_line("<human>: My friend is sad.\n<bot>: Listen to them and be kind.", "prosocial"),
        oig_line("<human>: Should I cheat on the test?\nRosey: No, study instead.", "prosocial"),
        oig_line("<human>: Tell me a joke.\n<bot>: Why did the bike fall? It was two-tired.", "unified_chip2"),
        # a `meta` line (the key BLOOMChat's script reads): skipped by both rules
        oig_line("<human>: Is lying ever OK?\n<bot>: Sometimes, to protect someone.", "prosocial", key="meta"),
    ]
    return write_jsonl(tmp_path / "unified_chip2.jsonl", rows)


def test_prosocial_check_meta_is_bloomchats_script(tmp_path, oig_prosocial):
    out = tmp_path / "meta.jsonl"
    s = prepare(out=out, oig=[oig_prosocial], filters=False, prosocial_check="meta", progress=False)
    assert Counter(r["completion"] for r in read_out(out)) == Counter(bloomchat_subsample([oig_prosocial], 100))
    assert s["files"][0]["filtered"] == {"prosocial": 1} and s["files"][0]["kept"] == 4
    # the summary counts what each rule would skip, whichever is in force
    assert s["oig_skip_rules"] == {"meta_or_metadata": 3, "meta": 1}
    assert s["options"]["prosocial_check"] == "meta"


def test_prosocial_check_default_skips_metadata_too(tmp_path, oig_prosocial):
    out = tmp_path / "default.jsonl"
    s = prepare(out=out, oig=[oig_prosocial], filters=False, progress=False)
    texts = [r["completion"] for r in read_out(out)]
    assert len(texts) == 2 and not any("sad" in t or "cheat" in t or "lying" in t for t in texts)
    assert s["files"][0]["filtered"] == {"prosocial": 3} and s["files"][0]["balanced"]
    assert s["oig_skip_rules"] == {"meta_or_metadata": 3, "meta": 1}
    with pytest.raises(BloomchatError, match="prosocial_check must be one of"):
        prepare(out=out, oig=[oig_prosocial], prosocial_check="metadata", progress=False)


def test_prosocial_check_on_real_oig_file(shared_data, tmp_path):
    """OIG's own layout (`metadata`, source = the file's name): neither rule skips anything there."""
    p = shared_data("oig_joke_explanations", "unified_joke_explanations.jsonl")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    sa = prepare(out=a, oig=[p], filters=False, shuffle=False, detect_lang=False, progress=False)
    sb = prepare(out=b, oig=[p], filters=False, shuffle=False, detect_lang=False, prosocial_check="meta", progress=False)
    assert sa["oig_skip_rules"] == sb["oig_skip_rules"] == {"meta_or_metadata": 0, "meta": 0}
    assert a.read_bytes() == b.read_bytes() and sa["conversations"] == 356


# ---------------------------------------------------------------- OASST1 split


def tree_of(mid: str) -> str:
    return {"A": "A", "B": "B", "X": "Z"}.get(mid[:1].upper() if mid[:1] in "aAbBxX" else mid, mid[:1].upper())


def split_messages() -> list[dict]:
    """oasst_messages() with HF's message_tree_id (tree A, tree B, orphan subtree under absent tree Z)."""
    return [{**m, "message_tree_id": tree_of(m["message_id"])} for m in oasst_messages()]


def test_oasst1_trees_from_hf_split_parquet(tmp_path):
    msgs = split_messages()
    full = write_jsonl(tmp_path / "oasst_ready.messages.jsonl", msgs)
    train = tmp_path / "train-00000-of-00001.parquet"  # HF's split file: the messages of tree A only
    pq.write_table(pa.Table.from_pylist([m for m in msgs if m["message_tree_id"] == "A"]), train)
    out = tmp_path / "o.jsonl"
    s = prepare(out=out, oasst1=[full], oasst1_trees=train, filters=False, progress=False)
    (r,) = read_out(out)
    assert r["id"] == "oasst1:A"
    f = s["files"][0]
    # tree B (3 messages) and the orphan pair of tree Z left out as another split, not rejected
    assert f["filtered"] == {"oasst_other_branch": 3, "oasst_other_split": 5} and f["rejected"] == {}
    assert f["balanced"] and f["lines_read"] == 12
    assert s["oasst1_split"] == {"tree_ids_listed": 1, "trees_kept": 1, "trees_dropped": 1}
    assert s["options"]["oasst1_trees"] == str(train)


def test_oasst1_trees_txt_tree_export_and_no_tree_field(tmp_path):
    ids = tmp_path / "train_trees.txt"
    ids.write_text("B\n\n")
    # message-level export without message_tree_id: the root's message_id names the tree
    plain = write_jsonl(tmp_path / "plain.jsonl", oasst_messages())
    s = prepare(out=tmp_path / "p.jsonl", oasst1=[plain], oasst1_trees=ids, filters=False, progress=False)
    assert [r["id"] for r in read_out(tmp_path / "p.jsonl")] == ["oasst1:B"]
    assert s["files"][0]["filtered"]["oasst_other_split"] == 7 and s["files"][0]["balanced"]
    # tree export (one tree a line)
    trees = write_jsonl(tmp_path / "trees.jsonl", [
        {"message_tree_id": t, "prompt": {"message_id": t, "role": "prompter", "text": f"Question {t}?",
                                           "replies": [{"role": "assistant", "text": f"Answer {t}."}]}}
        for t in "ABC"])
    s = prepare(out=tmp_path / "t.jsonl", oasst1=[trees], oasst1_trees=ids, progress=False)
    assert [r["completion"] for r in read_out(tmp_path / "t.jsonl")] == ["<human>: Question B?\n<bot>: Answer B."]
    assert s["oasst1_split"] == {"tree_ids_listed": 1, "trees_kept": 1, "trees_dropped": 2}
    empty = tmp_path / "none.txt"
    empty.write_text("\n")
    with pytest.raises(BloomchatError, match="none.txt: no OASST1 tree id"):
        prepare(out=tmp_path / "t.jsonl", oasst1=[trees], oasst1_trees=empty, progress=False)
    with pytest.raises(BloomchatError, match="no --oasst1 input"):
        prepare(out=tmp_path / "t.jsonl", jsonl=[trees], oasst1_trees=ids, progress=False)


def test_oasst1_trees_on_real_validation_split(shared_data, tmp_path):
    p = shared_data("oasst1", "oasst1_validation_en.messages.jsonl")
    msgs = [json.loads(l) for l in p.read_text(encoding="utf-8").splitlines()]
    roots = [m["message_tree_id"] for m in msgs if m["parent_id"] is None]
    half = tmp_path / "half.txt"
    half.write_text("\n".join(roots[::2]) + "\n")
    out = tmp_path / "half.jsonl"
    s = prepare(out=out, oasst1=[p], oasst1_trees=half, filters=False, detect_lang=False, progress=False)
    assert sorted(r["id"] for r in read_out(out)) == sorted(f"oasst1:{t}" for t in roots[::2])
    in_half = set(roots[::2])
    assert s["files"][0]["filtered"]["oasst_other_split"] == sum(m["message_tree_id"] not in in_half for m in msgs)
    assert s["balanced"]
    # the split file itself as the list of its trees: nothing changes
    a, b = tmp_path / "all.jsonl", tmp_path / "ref.jsonl"
    prepare(out=a, oasst1=[p], oasst1_trees=p, detect_lang=False, progress=False)
    prepare(out=b, oasst1=[p], detect_lang=False, progress=False)
    assert a.read_bytes() == b.read_bytes()


# ---------------------------------------------------------------- failed runs keep the last good output


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (out, rejects_path(out), summary_path(out))}


@pytest.fixture
def first_run(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"instruction": "Q?", "context": "", "response": "A."}, "{oops"])
    good2 = write_jsonl(tmp_path / "good2.jsonl", [{"instruction": "Why?", "context": "", "response": "Because."}])
    out = tmp_path / "o.jsonl"
    prepare(out=out, dolly=[good, good2], detect_lang=False, progress=False)
    before = _outputs(out)
    assert before["o.rejects.jsonl"]  # the first run has a rejected line: the file must survive
    return out, good, good2, before


def _left_alone(out: Path, before: dict) -> None:
    assert _outputs(out) == before
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_failed_run_bad_file_in_the_middle_keeps_outputs(first_run, tmp_path):
    out, good, good2, before = first_run
    bad = write_jsonl(tmp_path / "bad.jsonl", ["[1]", "{oops", json.dumps({"a": 1})])
    with pytest.raises(BloomchatError, match=r"bad.jsonl: no usable line .*o.rejects.failed.jsonl"):
        prepare(out=out, dolly=[good, bad, good2], detect_lang=False, progress=False)
    (tmp_path / "o.rejects.failed.jsonl").unlink()  # this run's reasons, kept apart
    _left_alone(out, before)


def test_failed_run_missing_file_keeps_outputs(first_run, tmp_path):
    out, good, good2, before = first_run
    with pytest.raises(BloomchatError, match="missing.jsonl: file not found"):
        prepare(out=out, dolly=[good, tmp_path / "missing.jsonl", good2], detect_lang=False, progress=False)
    _left_alone(out, before)


def test_failed_run_unwritable_output_keeps_outputs(first_run, tmp_path, monkeypatch):
    out, good, good2, before = first_run
    (tmp_path / "sub").mkdir()
    with pytest.raises(BloomchatError, match="sub: output path is a folder"):
        prepare(out=out, dolly=[good], rejects=tmp_path / "sub", detect_lang=False, progress=False)
    (tmp_path / "sub").rmdir()
    _left_alone(out, before)

    import errno
    import importlib

    prepare_mod = importlib.import_module("bloomchat.data.prepare")

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(a[1]))

    monkeypatch.setattr(prepare_mod, "_write_output", full_disk)
    with pytest.raises(BloomchatError, match=r"o.jsonl: cannot write: No space left on device"):
        prepare(out=out, dolly=[good, good2], detect_lang=False, progress=False)
    _left_alone(out, before)


def test_summary_matches_outputs_after_success(first_run, tmp_path):
    out, good, good2, before = first_run
    s = json.loads(summary_path(out).read_text())
    assert s["rejects_written"] == len(rejects_path(out).read_text().splitlines()) == 1
    assert s["conversations"] == len(out.read_text().splitlines()) == 2
