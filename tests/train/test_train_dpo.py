"""A preference stage (kind: dpo): recipe checks, packed pairs, reference log-probs stored once,
SFT -> DPO from the previous stage's weights, resume, LoRA on a non-BLOOM model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from train_helpers import make_pairs, write_recipe, write_shards

from bloomchat.chat_tokens import encode_rendered, render
from bloomchat.data.pairs import Pair
from bloomchat.errors import BloomchatError
from bloomchat.train import run_recipe
from bloomchat.train.recipe import recipe_from_dict
from bloomchat.train.report import read_metrics

MAX_LEN = 192


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", 28, seed=1)


def load_pairs(path: Path) -> dict[str, Pair]:
    return {p.id: p for p in (Pair.from_record(json.loads(x)) for x in path.read_text(encoding="utf-8").splitlines())}


def alone_reply(model, tokenizer, pair: Pair, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits predicting each token of the side's final reply + EOS, those tokens): the
    conversation run alone through the plain HF model (no packing, no bloomchat attention)."""
    r = render(tokenizer, pair.conversation(side))
    r.spans = r.spans[-1:]
    tm = encode_rendered(tokenizer, [r])[0]
    ids = torch.tensor(tm.ids, dtype=torch.long)[None]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    keep = torch.from_numpy(tm.mask[1:].astype(bool))
    return logits[:-1][keep], ids[0, 1:][keep]


def alone_logps(model, tokenizer, pair: Pair) -> list[float]:
    """Summed log-probs of each side's final reply, run alone: what packed training must reproduce."""
    out = []
    for side in ("chosen", "rejected"):
        logits, tgt = alone_reply(model, tokenizer, pair, side)
        out.append(float(torch.log_softmax(logits, -1).gather(1, tgt[:, None]).sum()))
    return out


def alone_kl(model, ref_model, tokenizer, pair: Pair) -> tuple[float, int]:
    """Summed next-token KL(model || ref_model) over both sides' reply positions, and their count."""
    tot, n = 0.0, 0
    for side in ("chosen", "rejected"):
        lp = torch.log_softmax(alone_reply(model, tokenizer, pair, side)[0].double(), -1)
        lq = torch.log_softmax(alone_reply(ref_model, tokenizer, pair, side)[0].double(), -1)
        tot += float((lp.exp() * (lp - lq)).sum())
        n += len(lp)
    return tot, n


def dpo_recipe(base: Path, out: Path, pairs: Path, *, sft_shards: Path | None = None, **stage) -> dict:
    stages = [{"name": "sft", "epochs": 1, "data": {"shards": str(sft_shards)}}] if sft_shards else []
    stages.append({"name": "dpo", "kind": "dpo", "epochs": 2, "beta": 0.5, **stage,
                   "data": {"pairs": [str(pairs)], "max_seq_length": MAX_LEN, "dev_ratio": 0.3}})
    return {"name": "pref", "base_model": str(base), "output_dir": str(out), "seed": 3,
            "defaults": {"global_batch_size": 4, "micro_batch_size": 2, "lr": 1e-3, "weight_decay": 0.0},
            "stages": stages}


@pytest.mark.parametrize("change, key, message", [
    ({"kind": "dpo", "data": {"shards": "SHARDS"}}, "kind", "trains on data.pairs"),
    ({"data": {"pairs": ["PAIRS"]}}, "data.pairs", "needs kind: dpo"),
    ({"beta": 0.2}, "beta", "set kind: dpo"),
    ({"kind": "dpo", "loss": "ipo", "label_smoothing": 0.1}, "label_smoothing", "not ipo"),
    ({"kind": "dpo", "label_smoothing": 0.5}, "label_smoothing", "[0, 0.5)"),
    ({"kind": "dpo", "beta": 0}, "beta", "> 0"),
    ({"kind": "dpo", "prompt_loss_weight": 0.1}, "prompt_loss_weight", "must be 0"),
    ({"kind": "dpo", "loss": "kto"}, "loss", "one of 'dpo', 'ipo', 'orpo', 'simpo'"),
    ({"kind": "dpo", "data": {"pairs": ["PAIRS"], "packing": "bfd"}}, "data.packing", "greedy"),
    ({"kind": "dpo", "data": {"pairs": ["PAIRS"], "loss_on": "conversation"}}, "data.loss_on", "does not apply"),
    ({"kind": "dpo", "data": {"pairs": ["PAIRS"], "jsonl": ["PAIRS"]}}, "data.pairs", "only data"),
])
def test_recipe_refuses_bad_preference_stages(tmp_path, micro_model_dir, tiny_tokenizer, pairs_file, change, key,
                                              message):
    shards = write_shards(tmp_path / "s", tiny_tokenizer, n_rows=4, seed=0)
    stage = {"name": "st", "data": {"pairs": ["PAIRS"]} if change.get("kind") == "dpo" else {"shards": "SHARDS"}}
    stage.update(change)
    raw = json.loads(json.dumps(stage).replace("SHARDS", str(shards)).replace("PAIRS", str(pairs_file)))
    with pytest.raises(BloomchatError) as e:
        recipe_from_dict({"name": "x", "base_model": str(micro_model_dir), "output_dir": str(tmp_path / "o"),
                          "stages": [raw]}, base=tmp_path)
    assert f"stages[0].{key}" in str(e.value) and message in str(e.value)


def test_packed_pairs_layout(tmp_path, tiny_tokenizer, pairs_file):
    from bloomchat.pack.pairs import pack_pairs

    pairs = load_pairs(pairs_file)
    big = make_pairs(tmp_path / "with_long.jsonl", 1, seed=9)
    long = json.loads(big.read_text())
    long["chosen"], long["id"] = "word " * 400, "long"
    both = tmp_path / "both.jsonl"
    both.write_text(pairs_file.read_text(encoding="utf-8") + json.dumps(long) + "\n", encoding="utf-8")
    stats = pack_pairs([both], tiny_tokenizer, tmp_path / "packed", max_seq_length=MAX_LEN, dev_ratio=0.3)
    assert stats["dropped_overlong"] == 1 and stats["kind"] == "pairs"
    assert stats["split"]["train"]["pairs"] + stats["split"]["dev"]["pairs"] == len(pairs)
    side_of = {}
    eos = tiny_tokenizer.eos_token
    for split in ("train", "dev"):
        t = pq.read_table(tmp_path / "packed" / split).to_pylist()
        assert sum(len(r["pair_id"]) for r in t) == stats["split"][split]["pairs"]
        for r in t:
            ids, mask, seg = (np.array(r[k]) for k in ("input_ids", "loss_mask", "segment_ids"))
            assert len(ids) <= MAX_LEN and seg.max() == 2 * len(r["pair_id"])
            for k, (pid, lang) in enumerate(zip(r["pair_id"], r["pair_lang"])):
                p = pairs[pid]
                assert lang == p.lang
                for side, s in (("chosen", 2 * k + 1), ("rejected", 2 * k + 2)):
                    text = tiny_tokenizer.decode(ids[seg == s].tolist())
                    reply = p.chosen if side == "chosen" else p.rejected
                    assert text.endswith(f"<bot>: {reply}{eos}") and text.startswith(f"<human>: {p.prompt[0].text}")
                    assert tiny_tokenizer.decode(ids[(seg == s) & (mask == 1)].tolist()) == f" {reply}{eos}"
                side_of[pid] = split
    by_prompt = {}
    for pid, p in pairs.items():  # pairs sharing a prompt never straddle train and dev
        by_prompt.setdefault(json.dumps([t.to_dict() for t in p.prompt]), set()).add(side_of[pid])
    assert all(len(v) == 1 for v in by_prompt.values()) and any(len(p.prompt) == 3 for p in pairs.values())


def test_kl_and_log_ratio_zero_before_training_then_equal_a_direct_computation(tmp_path, micro_model_dir,
                                                                                  tiny_tokenizer, pairs_file):
    """PreferenceLoss's dev metrics on a LoRA BLOOM, several pairs packed a row: before any update
    (lora_B = 0) the log-ratios and the next-token KL to the adapter-off model are 0; with the
    adapter moved, they equal the same quantities computed with the plain HF forward, each
    conversation alone (per pair and side, then weighted by reply tokens)."""
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bloomchat.pack.pairs import pack_pairs
    from bloomchat.train.pair_data import PairSplit
    from bloomchat.train.packing_attn import install_packed_attention, uninstall_packed_attention
    from bloomchat.train.preference import PreferenceConfig, PreferenceLoss, pair_logps

    pack_pairs([pairs_file], tiny_tokenizer, tmp_path / "p", max_seq_length=MAX_LEN, dev_ratio=0.0)
    split = PairSplit(tmp_path / "p", "train")
    b = split.batch([0, 1], pad_id=tiny_tokenizer.pad_token_id)
    assert b["n_pairs"] > 2  # packed: several pairs a row
    base = AutoModelForCausalLM.from_pretrained(micro_model_dir)
    install_packed_attention(base)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=["query_key_value", "dense_4h_to_h"])).eval()
    with torch.no_grad(), model.disable_adapter():
        b["ref"] = pair_logps(model, b, "cpu").double()
    acc = SimpleNamespace(device="cpu", reduce=lambda t, reduction: t.clone())  # one process

    def dev_metrics():
        step = PreferenceLoss(PreferenceConfig("dpo", 0.5), split.langs, reference=model.disable_adapter)
        with torch.no_grad():
            step(model, {**b, "dummy": False}, "cpu")
        return step.metrics("dev", acc)

    m0 = dev_metrics()
    assert m0["pairs"] == b["n_pairs"] and set(m0["by_lang"]) == {split.langs[i] for i in b["lang_idx"]}
    for k in ("log_ratio_chosen", "log_ratio_rejected", "kl_next_token"):
        assert m0[k] == pytest.approx(0.0, abs=1e-5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if "lora_B" in name:
                w.add_(torch.randn(w.shape, generator=g))
    m1 = dev_metrics()
    uninstall_packed_attention(model)  # the direct computation: stock HF attention, one conversation alone
    ref_model = AutoModelForCausalLM.from_pretrained(micro_model_dir).eval()  # = the adapter off
    pairs = load_pairs(pairs_file)
    ids = [pid for row in split.ds["pair_id"] for pid in row]
    kl_sum = kl_n = 0.0
    ratio, n_tok = np.zeros(2), np.zeros(2)
    for i in b["pair_index"].tolist():
        pair = pairs[ids[i]]
        ratio += np.array(alone_logps(model, tiny_tokenizer, pair)) - np.array(alone_logps(ref_model, tiny_tokenizer,
                                                                                            pair))
        n_tok += [len(alone_reply(model, tiny_tokenizer, pair, side)[1]) for side in ("chosen", "rejected")]
        s, n = alone_kl(model, ref_model, tiny_tokenizer, pair)
        kl_sum, kl_n = kl_sum + s, kl_n + n
    assert m1["kl_next_token"] > 1e-3 and m1["kl_next_token"] == pytest.approx(kl_sum / kl_n, rel=1e-4, abs=1e-7)
    assert (m1["log_ratio_chosen"], m1["log_ratio_rejected"]) == pytest.approx(tuple(ratio / n_tok), abs=1e-5)
    assert abs(m1["log_ratio_chosen"]) > 1e-3


@pytest.fixture(scope="module")
def sft_then_dpo(tmp_path_factory, micro_model_dir, tiny_tokenizer, pairs_file):
    tmp = tmp_path_factory.mktemp("sft_dpo")
    shards = write_shards(tmp / "sft", tiny_tokenizer, n_rows=8, seed=2)
    r = dpo_recipe(micro_model_dir, tmp / "out", pairs_file, sft_shards=shards, save_every_steps=2)
    path = write_recipe(tmp / "recipe.yaml", r)
    return run_recipe(path, progress=False), tmp, path


def test_dpo_stage_after_sft_reference_and_metrics(sft_then_dpo, tiny_tokenizer, pairs_file):
    from transformers import AutoModelForCausalLM

    res, tmp, _ = sft_then_dpo
    sft, dpo = res["stages"]
    assert dpo["init_from"] == sft["model_dir"] and dpo["kind"] == "dpo" and dpo["loss"] == "dpo"
    recs = read_metrics(Path(dpo["metrics"]))
    train = [r for r in recs if r["kind"] == "train"]
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1
    assert train[0]["reward_margin"] == pytest.approx(0, abs=1e-6) and train[0]["reward_accuracy"] == 0.0
    assert (train[0]["log_ratio_chosen"], train[0]["log_ratio_rejected"]) == pytest.approx((0, 0), abs=1e-5)
    assert not any("kl_next_token" in r for r in recs)  # full fine-tuning keeps no reference weights
    stats = json.loads((tmp / "out" / "dpo" / "data" / "pairs" / "stats.json").read_text())
    assert train[-1]["loss"] < train[0]["loss"]
    assert sum(r["pairs"] for r in train) == 2 * stats["split"]["train"]["pairs"]  # 2 epochs, every pair scored
    # the stored reference = the SFT model's log-probs of each pair run alone, unpacked
    init = AutoModelForCausalLM.from_pretrained(sft["model_dir"]).eval()
    pairs = load_pairs(pairs_file)
    sd = tmp / "out" / "dpo"
    for split in ("train", "dev"):
        ref = np.load(sd / "reference" / f"{split}.npy")
        ids = [pid for row in pq.read_table(sd / "data" / "pairs" / split).column("pair_id").to_pylist() for pid in row]
        assert ref.shape == (len(ids), 2)
        for pid, got in zip(ids, ref):
            assert got == pytest.approx(alone_logps(init, tiny_tokenizer, pairs[pid]), abs=1e-4)
    dev = [r for r in recs if r["kind"] == "dev"][0]
    dev_langs = {pairs[p].lang for row in pq.read_table(sd / "data" / "pairs" / "dev").column("pair_id").to_pylist()
                 for p in row}
    assert set(dev["by_lang"]) == dev_langs and sum(v["pairs"] for v in dev["by_lang"].values()) == dev["pairs"]
    assert 0.0 <= dev["reward_accuracy"] <= 1.0 and dev == {**dev, **dpo["dev_metrics"]}


class _Crash(RuntimeError):
    pass


def test_resume_reads_the_stored_reference(tmp_path, micro_model_dir, pairs_file, monkeypatch):
    """A crash after step 3 (checkpoint at 2): the resumed stage reads its reference back (full
    fine-tuning cannot recompute it, the weights moved) and ends exactly as an uninterrupted run."""
    from bloomchat.train import report

    whole = run_recipe(write_recipe(tmp_path / "a.yaml", dpo_recipe(micro_model_dir, tmp_path / "a", pairs_file,
                                                                     save_every_steps=2)), progress=False)
    path = write_recipe(tmp_path / "b.yaml", dpo_recipe(micro_model_dir, tmp_path / "b", pairs_file, save_every_steps=2))
    write = report.MetricsLog.write

    def crash(self, rec):
        write(self, rec)
        if rec.get("step") == 3:
            raise _Crash()

    monkeypatch.setattr(report.MetricsLog, "write", crash)
    with pytest.raises(_Crash):
        run_recipe(path, progress=False)
    monkeypatch.setattr(report.MetricsLog, "write", write)
    ref_dir = tmp_path / "b" / "dpo" / "reference"
    shutil.move(ref_dir, tmp_path / "kept-reference")
    with pytest.raises(BloomchatError, match="reference log-probs .* missing"):
        run_recipe(path, resume=True, progress=False)
    shutil.move(tmp_path / "kept-reference", ref_dir)
    res = run_recipe(path, resume=True, progress=False)
    a, b = (read_metrics(Path(r["stages"][0]["metrics"])) for r in (whole, res))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6, abs=1e-7)
        assert y.get("reward_margin") == pytest.approx(x.get("reward_margin"), rel=1e-5, abs=1e-6)


@pytest.fixture(scope="module")
def llama(tmp_path_factory, tiny_tokenizer_dir):
    """A 2-layer LlamaForCausalLM (hidden 64) with the tiny tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("llama")
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return root / "base"


@pytest.mark.parametrize("loss", ["dpo", "simpo"])
def test_lora_preference_stage_on_llama(tmp_path, llama, tiny_tokenizer, pairs_file, loss):
    """LoRA on a non-BLOOM model: the reference is the base with the adapter off (dpo), SimPO needs none;
    the merged export moved away from the base."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    r = dpo_recipe(llama, tmp_path / "out", pairs_file, loss=loss, lr=5e-3)
    r.update(method="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    res = run_recipe(write_recipe(tmp_path / "r.yaml", r), progress=False)
    st = res["stages"][0]
    train = [x for x in read_metrics(Path(st["metrics"])) if x["kind"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    sd = tmp_path / "out" / "dpo"
    assert (sd / "reference").exists() == (loss == "dpo")
    if loss == "dpo":
        assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
        base = AutoModelForCausalLM.from_pretrained(llama).eval()
        pairs = load_pairs(pairs_file)
        ref = np.load(sd / "reference" / "train.npy")
        ids = [p for row in pq.read_table(sd / "data" / "pairs" / "train").column("pair_id").to_pylist() for p in row]
        for pid, got in list(zip(ids, ref))[:6]:
            assert got == pytest.approx(alone_logps(base, tiny_tokenizer, pairs[pid]), abs=1e-4)
    w0, w1 = load_file(str(llama / "model.safetensors")), load_file(str(Path(st["model_dir"]) / "model.safetensors"))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0 if "q_proj" in k)
    # KL to the reference (the adapter off = the base) on the dev pairs: exact next-token KL, any loss
    if loss == "dpo":
        assert (train[0]["log_ratio_chosen"], train[0]["log_ratio_rejected"]) == pytest.approx((0, 0), abs=1e-5)
    assert not any("kl_next_token" in r for r in train) and ("log_ratio_chosen" in train[0]) == (loss == "dpo")
    dev = [x for x in read_metrics(Path(st["metrics"])) if x["kind"] == "dev"][0]
    tuned = AutoModelForCausalLM.from_pretrained(st["model_dir"]).eval()
    base = AutoModelForCausalLM.from_pretrained(llama).eval()
    pairs = load_pairs(pairs_file)
    dev_ids = [p for row in pq.read_table(sd / "data" / "pairs" / "dev").column("pair_id").to_pylist() for p in row]
    sums = np.array([alone_kl(tuned, base, tiny_tokenizer, pairs[pid]) for pid in dev_ids])
    assert dev["kl_next_token"] > 1e-5
    assert dev["kl_next_token"] == pytest.approx(sums[:, 0].sum() / sums[:, 1].sum(), rel=1e-3, abs=1e-7)
    assert f"{dev['kl_next_token']:.5f} nats" in (Path(st["model_dir"]) / "README.md").read_text()


def test_dev_metrics_per_language_recomputed_from_the_exported_model(sft_then_dpo, tiny_tokenizer, pairs_file):
    """The dev record's reward accuracy, margins and log-probs = the same numbers recomputed here
    from the exported model, each held-out pair alone, and the stored reference; the card shows them."""
    from transformers import AutoModelForCausalLM

    res, tmp, _ = sft_then_dpo
    dpo = res["stages"][1]
    sd = tmp / "out" / "dpo"
    dev = [r for r in read_metrics(Path(dpo["metrics"])) if r["kind"] == "dev"][0]
    model = AutoModelForCausalLM.from_pretrained(dpo["model_dir"]).eval()
    pairs = load_pairs(pairs_file)
    ids = [p for row in pq.read_table(sd / "data" / "pairs" / "dev").column("pair_id").to_pylist() for p in row]
    ref = np.load(sd / "reference" / "dev.npy")
    per_lang: dict[str, list] = {}
    for pid, r in zip(ids, ref):
        lp = np.array(alone_logps(model, tiny_tokenizer, pairs[pid]))
        rc, rr = 0.5 * (lp - r)  # beta 0.5
        n = [len(alone_reply(model, tiny_tokenizer, pairs[pid], side)[1]) for side in ("chosen", "rejected")]
        per_lang.setdefault(pairs[pid].lang, []).append((rc > rr, rc - rr, lp[0], lp[1], *(lp - r), *n))
    assert set(per_lang) == set(dev["by_lang"])
    for lang, vals in per_lang.items():
        got = dev["by_lang"][lang]
        acc, margin, c, r = (np.mean([v[i] for v in vals]) for i in range(4))
        assert got["pairs"] == len(vals) and got["reward_accuracy"] == pytest.approx(acc)
        assert (got["reward_margin"], got["logps_chosen"], got["logps_rejected"]) == pytest.approx((margin, c, r),
                                                                                                   abs=1e-4)
        # log-ratio to the reference: summed over the language's reply tokens / their number
        assert (got["log_ratio_chosen"], got["log_ratio_rejected"]) == pytest.approx(
            (sum(v[4] for v in vals) / sum(v[6] for v in vals), sum(v[5] for v in vals) / sum(v[7] for v in vals)),
            abs=1e-5)
    every = [v for vals in per_lang.values() for v in vals]
    assert dev["reward_margin"] == pytest.approx(np.mean([v[1] for v in every]), abs=1e-4)
    assert dev["log_ratio_rejected"] == pytest.approx(sum(v[5] for v in every) / sum(v[7] for v in every), abs=1e-5)
    assert abs(dev["log_ratio_rejected"]) > 1e-3  # training moved it: the comparison is not between zeros
    card = (Path(dpo["model_dir"]) / "README.md").read_text()
    assert "## Preference tuning" in card and f"reward accuracy {dev['reward_accuracy']:.3f}" in card
    assert f"chosen {dev['log_ratio_chosen']:.4f}, rejected {dev['log_ratio_rejected']:.4f}" in card
    assert all(f"| {lang} | {len(v)} |" in card for lang, v in per_lang.items()) and "preference pairs" in card


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, micro_model_dir, pairs_file):
    """`accelerate launch` with 2 CPU processes: the reference (each process a share of the rows,
    summed), the per-step losses and reward metrics and the dev metrics equal the 1-process run."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]

    def recipe(out):
        r = dpo_recipe(micro_model_dir, tmp_path / out, pairs_file)
        r["defaults"].update(micro_batch_size=1)
        return r

    one = run_recipe(write_recipe(tmp_path / "one.yaml", recipe("one")), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_DISABLE_RICH": "1"}
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                        str(repo / "recipes/accelerate/cpu_2proc.yaml"), "-m", "bloomchat.train",
                        str(write_recipe(tmp_path / "two.yaml", recipe("two")))],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "dpo" / "result.json").read_text())["processes"] == 2
    for split in ("train", "dev"):
        np.testing.assert_allclose(np.load(tmp_path / "two" / "dpo" / "reference" / f"{split}.npy"),
                                   np.load(tmp_path / "one" / "dpo" / "reference" / f"{split}.npy"), atol=1e-5)
    a = read_metrics(Path(one["stages"][0]["metrics"]))
    b = read_metrics(tmp_path / "two" / "dpo" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] and b[-1]["kind"] == "dev"
    for x, y in zip(a, b):
        assert x["pairs"] == y["pairs"] and x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-6)
        assert x["reward_margin"] == pytest.approx(y["reward_margin"], rel=1e-3, abs=1e-5)
    assert a[-1]["by_lang"].keys() == b[-1]["by_lang"].keys()
