"""pack() end to end: shards and stats agree, any num_proc gives the same bytes, bad input is named."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bloomchat.conversation import Conversation
from bloomchat.errors import BloomchatError
from bloomchat.pack import check_tokenizer_matches, iter_rows, load_packed, pack, read_stats
from bloomchat.pack.encode import encode_conversations
from bloomchat.pack.pipeline import dev_side

WORDS = ["hello", "world", "你好", "北京", "bonjour", "merci", "biblioteca", "مرحبا", "नमस्ते", "cảm ơn", "obrigado"]


def _records(n=60, seed=0):
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        turns = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            turns.append({"role": "human", "text": " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))})
            turns.append({"role": "bot", "text": " ".join(rng.choices(WORDS, k=rng.randint(1, 25)))})
        conv = Conversation.from_record({"turns": turns, "source": rng.choice(["dolly", "oasst1"]),
                                         "lang": rng.choice(["en", "zh"]), "id": f"conv-{i}"})
        recs.append(conv.to_record())
    return recs


def _write(path: Path, recs, extra_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


@pytest.fixture()
def prepared(tmp_path):
    return _write(tmp_path / "prepared.jsonl", _records())


def _rows(out, split):
    return [{k: v.tolist() for k, v in r.items()} for r in iter_rows(out, split)]


@pytest.mark.parametrize("packing", ["greedy", "full", "single", "bfd"])
def test_shards_hold_every_conversation_once_and_stats_agree(tmp_path, prepared, tiny_tokenizer, packing):
    out = tmp_path / "out"
    stats = pack(prepared, tiny_tokenizer, out, max_seq_length=256, packing=packing, dev_ratio=0.25,
                 progress=False, plot=False, window=16)
    convs = [Conversation.from_record(r) for r in _records()]
    encoded = {e.key: e for e in encode_conversations(convs, tiny_tokenizer)}
    assert max(len(e.input_ids) for e in encoded.values()) <= 256  # nothing overlong here
    rows = {s: _rows(out, s) for s in ("train", "dev")}
    everything = [r for s in rows for r in rows[s]]
    # The multiset of tokens equals the unpacked one; loss tokens likewise.
    assert Counter(t for r in everything for t in r["input_ids"]) == \
        Counter(t for e in encoded.values() for t in e.input_ids.tolist())
    assert sum(sum(r["loss_mask"]) for r in everything) == sum(int(e.loss_mask.sum()) for e in encoded.values())
    for s in ("train", "dev"):
        want = {k for k in encoded if dev_side(encoded[k].split_key, 0, 0.25) == (s == "dev")}
        got_tokens = Counter(t for r in rows[s] for t in r["input_ids"])
        assert got_tokens == Counter(t for k in want for t in encoded[k].input_ids.tolist())
        if packing != "full":  # each segment is exactly one whole conversation
            segs = []
            for r in rows[s]:
                ids, seg = np.array(r["input_ids"]), np.array(r["segment_ids"])
                segs += [ids[seg == k].tolist() for k in range(1, seg.max() + 1)]
            assert sorted(segs) == sorted(encoded[k].input_ids.tolist() for k in want)
        st = stats["split"][s]
        assert st["sequences"] == len(rows[s]) and st["conversations"] == len(want)
        assert st["tokens"] == sum(len(r["input_ids"]) for r in rows[s])
    assert 0 < stats["split"]["dev"]["conversations"] < stats["split"]["train"]["conversations"]
    assert stats["conversations"] == 60 and stats["dropped"] == 0
    assert stats["sequences"] == len(everything) and all(len(r["input_ids"]) <= 256 for r in everything)
    assert stats["padding_fraction"] == pytest.approx(1 - stats["tokens"] / (256 * stats["sequences"]), abs=1e-6)
    assert stats["tokenizer"]["vocab_size"] == len(tiny_tokenizer)
    assert read_stats(out) == stats
    schema = pq.read_schema(next((out / "train").glob("*.parquet")))
    assert [str(schema.field(c).type) for c in ("input_ids", "loss_mask", "segment_ids")] == \
        ["list<element: int32>", "list<element: int8>", "list<element: int16>"]


def test_output_is_identical_for_any_num_proc(tmp_path, tiny_tokenizer_dir):
    path = _write(tmp_path / "p.jsonl", _records(120, seed=3))
    outs = []
    for i, (num_proc, chunk) in enumerate([(1, 1000), (2, 7), (3, 1)]):
        out = tmp_path / f"o{i}"
        s = pack(path, tiny_tokenizer_dir, out, max_seq_length=128, packing="bfd", dev_ratio=0.1, num_proc=num_proc,
                 chunk_lines=chunk, progress=False, plot=False, window=20)
        s.pop("timing")
        outs.append((s, {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}))
    assert outs[0] == outs[1] == outs[2]


def test_copies_of_a_conversation_stay_on_one_side_of_the_split(tmp_path, tiny_tokenizer):
    """OIG unified_basic items come 1001 times with distinct ids: dev must not hold what train holds."""
    recs = _records(20, seed=7)
    basic = {"turns": [{"role": "human", "text": "Who are you?"}, {"role": "bot", "text": "An open chat model."}],
             "source": "oig/unified_basic", "lang": "en"}
    recs += [Conversation.from_record({**basic, "id": f"unified_basic.jsonl:1#{k}"}).to_record() for k in range(40)]
    path = _write(tmp_path / "p.jsonl", recs)
    out = tmp_path / "out"
    stats = pack(path, tiny_tokenizer, out, max_seq_length=128, packing="single", dev_ratio=0.5, progress=False,
                 plot=False)
    sides = {s: [tuple(r["input_ids"]) for r in _rows(out, s)] for s in ("train", "dev")}
    assert not set(sides["train"]) & set(sides["dev"])
    assert stats["split"]["dev"]["conversations"] > 0 and stats["conversations"] == 60
    (enc,) = encode_conversations([Conversation.from_record({**basic, "id": "x"})], tiny_tokenizer)
    assert max(sides["train"].count(tuple(enc.input_ids.tolist())), sides["dev"].count(tuple(enc.input_ids.tolist()))) == 40


def test_directory_input_skips_the_rejects_file_prepare_writes(tmp_path, tiny_tokenizer):
    d = tmp_path / "data"
    d.mkdir()
    _write(d / "stage2.jsonl", _records(10))
    (d / "stage2.rejects.jsonl").write_text(json.dumps({"file": "raw.jsonl", "line": 3, "reason": "malformed JSON"}) + "\n")
    s = pack(d, tiny_tokenizer, tmp_path / "out", progress=False, plot=False)
    assert s["inputs"] == [str(d / "stage2.jsonl")] and s["conversations"] == 10 and s["dropped"] == 0


def test_overlong_split_and_drop_are_counted(tmp_path, tiny_tokenizer):
    recs = _records(30, seed=5)
    long_reply = " ".join(["北京 hello"] * 200)
    recs.append(Conversation.from_record({"turns": [{"role": "human", "text": "long"},
                                                    {"role": "bot", "text": long_reply}], "id": "long"}).to_record())
    path = _write(tmp_path / "p.jsonl", recs)
    (enc,) = encode_conversations([Conversation.from_record(recs[-1])], tiny_tokenizer)
    n_long = len(enc.input_ids)
    assert n_long > 128
    split = pack(path, tiny_tokenizer, tmp_path / "s", max_seq_length=128, overlong="split", progress=False, plot=False)
    drop = pack(path, tiny_tokenizer, tmp_path / "d", max_seq_length=128, overlong="drop", progress=False, plot=False)
    assert split["overlong"]["conversations"] >= 1 and split["dropped"] == 0
    assert drop["dropped_by_reason"]["overlong"] == drop["overlong"]["conversations"] >= 1
    assert split["tokens"] - drop["tokens"] >= n_long - 128  # the long one's reply pieces are kept
    assert split["loss_tokens"] - drop["loss_tokens"] >= int(enc.loss_mask.sum()) - 20
    for out in (tmp_path / "s", tmp_path / "d"):
        assert all(len(r["input_ids"]) <= 128 for r in iter_rows(out))


def test_shards_are_bounded_and_stream(tmp_path, prepared, tiny_tokenizer):
    out = tmp_path / "out"
    stats = pack(prepared, tiny_tokenizer, out, max_seq_length=64, packing="greedy", shard_rows=5,
                 row_group_rows=2, progress=False, plot=False)
    files = sorted((out / "train").glob("*.parquet"))
    assert len(files) == len(stats["shards"]["train"]) > 2
    assert all(pq.ParquetFile(f).metadata.num_rows <= 5 for f in files)
    assert all(pq.ParquetFile(f).metadata.row_group(0).num_rows <= 2 for f in files)
    ds = load_packed(out, "train", streaming=True)
    streamed = [r["input_ids"] for r in ds]
    assert streamed == [r["input_ids"] for r in _rows(out, "train")]
    assert len(streamed) == stats["split"]["train"]["sequences"]
    # Packing again into the same dir replaces, never mixes, the old shards.
    again = pack(prepared, tiny_tokenizer, out, max_seq_length=256, progress=False, plot=False)
    assert len(list((out / "train").glob("*.parquet"))) == len(again["shards"]["train"]) == 1


def test_records_without_bot_turn_are_counted_and_invalid_lines_named(tmp_path, tiny_tokenizer):
    no_bot = json.dumps({"turns": [{"role": "human", "text": "question only"}], "id": "q"})
    path = _write(tmp_path / "p.jsonl", _records(10), [no_bot, "", '{"text": "<human>: raw OIG"}'])
    with pytest.raises(BloomchatError, match=r"p\.jsonl:13: not a prepared record"):
        pack(path, tiny_tokenizer, tmp_path / "o", progress=False, plot=False)
    assert not (tmp_path / "o" / "stats.json").exists()
    s = pack(path, tiny_tokenizer, tmp_path / "o", skip_invalid=True, progress=False, plot=False)
    assert s["dropped_by_reason"]["no_bot_turn"] == 1 and s["dropped_by_reason"]["invalid"] == 1
    assert s["dropped"] == 2 and s["conversations"] == 10
    assert [e["where"].rsplit("/", 1)[-1] for e in s["skipped_examples"]] == ["p.jsonl:11", "p.jsonl:13"]


@pytest.mark.parametrize("kwargs, match", [
    ({"packing": "zigzag"}, "unknown packing"),
    ({"max_seq_length": 1}, "max_seq_length"),
    ({"dev_ratio": 1.5}, "dev_ratio"),
    ({"overlong": "truncate"}, "overlong"),
    ({"num_proc": 0}, "num_proc"),
    ({"bogus": 1}, "unknown pack option"),
])
def test_bad_arguments(tmp_path, prepared, tiny_tokenizer, kwargs, match):
    with pytest.raises(BloomchatError, match=match):
        pack(prepared, tiny_tokenizer, tmp_path / "o", progress=False, **kwargs)


def test_bad_inputs_and_tokenizers(tmp_path, prepared):
    with pytest.raises(BloomchatError, match="input file not found"):
        pack(tmp_path / "missing.jsonl", "x", tmp_path / "o")
    (tmp_path / "notatok").mkdir()
    with pytest.raises(BloomchatError, match="notatok"):
        pack(prepared, tmp_path / "notatok", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BloomchatError, match="no \\*.jsonl"):
        pack(tmp_path / "empty", "x", tmp_path / "o")


def test_training_refuses_shards_of_another_tokenizer(tmp_path, prepared, tiny_tokenizer, tiny_tokenizer_dir):
    from bloomchat.models import train_bpe_tokenizer

    out = tmp_path / "out"
    pack(prepared, tiny_tokenizer_dir, out, progress=False, plot=False)
    assert check_tokenizer_matches(out, tiny_tokenizer)["tokenizer"]["vocab_size"] == len(tiny_tokenizer)
    assert check_tokenizer_matches(out, tiny_tokenizer_dir)
    other = train_bpe_tokenizer(["another vocabulary entirely"] * 10, vocab_size=300, min_frequency=1)
    with pytest.raises(BloomchatError, match="re-run `bloomchat pack`"):
        check_tokenizer_matches(out, other)
    with pytest.raises(BloomchatError, match="no stats.json"):
        check_tokenizer_matches(tmp_path, tiny_tokenizer)
    (out / "stats.json").write_text("{oops")
    with pytest.raises(BloomchatError, match="not valid JSON"):
        read_stats(out)


def test_cli_pack_and_check(tmp_path, prepared, tiny_tokenizer_dir, capsys, monkeypatch):
    import bloomchat.cli as cli

    out = tmp_path / "out"
    rc = cli.main(["pack", str(prepared), "--tokenizer", str(tiny_tokenizer_dir), "-o", str(out),
                   "--packing", "bfd", "--max-seq-length", "512", "--dev-ratio", "0.1", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "packed 60 conversations" in text and "padding" in text
    assert (out / "lengths.png").stat().st_size > 1000 and read_stats(out)["packing"] == "bfd"
    assert cli.main(["pack-check", str(out), "--tokenizer", str(tiny_tokenizer_dir)]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    rc = cli.main(["pack", str(bad), "--tokenizer", str(tiny_tokenizer_dir), "-o", str(tmp_path / "b"),
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "bad.jsonl:1: not JSON" in err


def test_cli_show_marks_exactly_the_replies(tmp_path, tiny_tokenizer_dir, capsys, monkeypatch):
    import bloomchat.cli as cli

    rec = {"turns": [{"role": "human", "text": "你好"}, {"role": "bot", "text": "北京是中国的首都。"},
                     {"role": "human", "text": "Hi"}, {"role": "bot", "text": "Hello!"}], "id": "a"}
    path = _write(tmp_path / "p.jsonl", [Conversation.from_record(rec).to_record()])
    out = tmp_path / "out"
    pack(path, tiny_tokenizer_dir, out, progress=False, plot=False)
    assert cli.main(["pack-show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "<human>: 你好\n<bot>:⟦ 北京是中国的首都。</s>⟧\n<human>: Hi\n<bot>:⟦ Hello!</s>⟧" in shown
    assert cli.main(["pack-show", str(out), "--html", str(tmp_path / "rows.html")]) == 0
    page = (tmp_path / "rows.html").read_text(encoding="utf-8")
    assert "<span class='l'> Hello!&lt;/s&gt;</span>" in page


def test_gzipped_input_packs_like_the_plain_file(tmp_path, tiny_tokenizer):
    import gzip

    recs = _records(40, seed=5)
    (tmp_path / "plain").mkdir()
    plain = _write(tmp_path / "plain" / "p.jsonl", recs)
    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    (gz_dir / "p.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (gz_dir / "p.rejects.jsonl.gz").write_bytes(gzip.compress(b'{"file": "raw.jsonl", "line": 1}\n'))
    outs = []
    for src in (plain, gz_dir):  # a file, and a directory of .jsonl.gz (its rejects file skipped)
        out = tmp_path / ("out_" + src.name)
        s = pack(src, tiny_tokenizer, out, max_seq_length=128, packing="bfd", dev_ratio=0.2, progress=False,
                 plot=False)
        for k in ("timing", "inputs"):
            s.pop(k)
        outs.append((s, {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}))
    assert outs[0] == outs[1] and outs[0][0]["conversations"] == 40
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(plain.read_bytes())[:200])  # cut off
    with pytest.raises(BloomchatError, match="cannot read compressed data") as e:
        pack(bad, tiny_tokenizer, tmp_path / "out_bad", progress=False, plot=False)
    assert str(bad) in str(e.value)
