"""Two stages from one recipe: outputs, stage chaining, LoRA export, raw sources, golden loss curve."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from train_helpers import micro_recipe, write_recipe, write_shards

from bloomchat.chat_format import CHAT_TEMPLATE
from bloomchat.train import run_recipe
from bloomchat.train.report import read_metrics


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory, micro_model_dir, packed_pair):
    tmp = tmp_path_factory.mktemp("run")
    p = write_recipe(tmp / "recipe.yaml", micro_recipe(micro_model_dir, tmp / "out", packed_pair["s1"],
                                                       packed_pair["s2"]))
    return run_recipe(p, progress=False), tmp


def test_two_stages_write_models_logs_and_cards(two_stage, micro_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res, tmp = two_stage
    s1, s2 = res["stages"]
    assert res["final_model_dir"] == s2["model_dir"] == str(tmp / "out" / "stage2" / "model")
    assert s1["init_from"] == str(micro_model_dir) and s2["init_from"] == s1["model_dir"]
    for s in (s1, s2):
        d = Path(s["model_dir"])
        assert (d / "model.safetensors").exists() and (d / "config.json").exists()
        tok = AutoTokenizer.from_pretrained(d)
        assert tok.chat_template == CHAT_TEMPLATE
        assert tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False,
                                       add_generation_prompt=True) == "<human>: 你好\n<bot>:"
        model = AutoModelForCausalLM.from_pretrained(d)
        out = model.generate(**tok("<human>: hi\n<bot>:", return_tensors="pt"), max_new_tokens=3, do_sample=False)
        assert out.shape[1] > 0
        recs = [r for r in read_metrics(Path(s["metrics"])) if r["kind"] == "train"]
        assert [r["step"] for r in recs] == list(range(1, s["steps"] + 1))
        assert recs[-1]["loss"] == pytest.approx(s["final_loss"])
        assert sum(r["loss_tokens"] for r in recs) == s["loss_tokens"] > 0
        assert Path(s["loss_plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        tb_dir = Path(s["metrics"]).parent / "tensorboard"
        if importlib.util.find_spec("tensorboard") is not None:  # TensorBoard events when installed
            assert any(tb_dir.iterdir())
        else:
            assert not tb_dir.exists()
        card = (d / "README.md").read_text()
        assert f"stage `{s['name']}`" in card and f"{s['final_loss']:.4f}" in card
        assert "base_model:" in card and "| oig |" in card or "| dolly |" in card
        assert "| zh |" in card  # conversations per language
        assert "global_batch_size: 4" in card  # the recipe itself
        # stage 2's model also saw stage 1's data: its card says so, with stage 1's counts
        assert ("## Earlier stages" in card) == (s is s2)
    card2 = (Path(s2["model_dir"]) / "README.md").read_text()
    assert f"`stage1`: {s1['steps']} steps, {s1['tokens']} tokens" in card2 and "by source: oig " in card2
    # loss goes down over the two stages (lr 3e-3 on a micro model)
    first = read_metrics(Path(s1["metrics"]))[0]["loss"]
    assert s2["final_loss"] < first
    assert s2["dev_loss"] is not None  # stage 2 data has a dev split
    # checkpoints: at most keep_checkpoints, `latest` names the stage's last step
    ck = Path(s2["checkpoints"])
    assert (ck / "latest").read_text().strip() == f"step-{s2['steps']:08d}"
    assert len(list(ck.glob("step-*"))) <= 2
    run = json.loads((tmp / "out" / "run.json").read_text())
    assert run["final_model_dir"] == res["final_model_dir"]


def test_resume_of_a_finished_run_skips_every_stage(two_stage):
    res, tmp = two_stage
    again = run_recipe(tmp / "recipe.yaml", resume=True, progress=False)
    assert [s["final_loss"] for s in again["stages"]] == [s["final_loss"] for s in res["stages"]]


def test_stage_two_starts_from_stage_one_weights(tmp_path, micro_model_dir, packed_pair):
    r = micro_recipe(micro_model_dir, tmp_path / "out", packed_pair["s1"], packed_pair["s2"])
    r["stages"][1].update(lr=1e-9, max_steps=1)  # stage 2 barely moves the weights it starts from
    res = run_recipe(write_recipe(tmp_path / "r.yaml", r), progress=False)
    base, w1, w2 = (_weights(micro_model_dir), _weights(res["stages"][0]["model_dir"]),
                    _weights(res["stages"][1]["model_dir"]))
    key = "transformer.h.0.self_attention.query_key_value.weight"
    assert not torch.allclose(base[key], w1[key], atol=1e-4)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-6, rtol=0)


def test_lora_is_merged_into_the_base_on_export(tmp_path, micro_model_dir, packed_pair):
    from transformers import AutoModelForCausalLM

    r = micro_recipe(micro_model_dir, tmp_path / "out", packed_pair["s1"], packed_pair["s2"])
    r.update(method="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0,
                                  "target_modules": ["query_key_value", "dense_4h_to_h"]})
    r["defaults"]["lr"] = 1e-2
    r["stages"] = r["stages"][:1]
    res = run_recipe(write_recipe(tmp_path / "r.yaml", r), progress=False)
    d = res["final_model_dir"]
    w, base = _weights(d), _weights(micro_model_dir)
    assert not any("lora" in k for k in w) and set(w) == set(base)
    qkv = "transformer.h.0.self_attention.query_key_value.weight"
    assert not torch.allclose(w[qkv], base[qkv])  # the adapter was merged into it
    emb = "transformer.word_embeddings.weight"
    torch.testing.assert_close(w[emb], base[emb])  # not a LoRA target: unchanged
    assert not (Path(d) / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(d)
    assert "method: lora" in (Path(d) / "README.md").read_text()


def test_raw_sources_are_prepared_and_packed_by_the_stage(tmp_path, micro_model_dir):
    dolly = tmp_path / "dolly.jsonl"
    rows = [("Name a colour.", "", "Blue."), ("Traduis 'cat'.", "", "Chat."),
            ("什么是茶？", "", "茶是一种饮料。"), ("Summarise.", "Paris is in France.", "Paris is French.")]
    with open(dolly, "w", encoding="utf-8") as f:
        for i in range(12):
            ins, ctx, resp = rows[i % 4]
            f.write(json.dumps({"instruction": f"{ins} {i}", "context": ctx, "response": resp,
                                "category": "open_qa"}, ensure_ascii=False) + "\n")
    r = {"name": "raw", "base_model": str(micro_model_dir), "output_dir": str(tmp_path / "out"),
         "defaults": {"global_batch_size": 2, "micro_batch_size": 2, "lr": 1e-3},
         "stages": [{"name": "sft", "data": {"dolly": ["dolly.jsonl"], "max_seq_length": 64,
                                              "prepare": {"detect_lang": False, "progress": False}}}]}
    res = run_recipe(write_recipe(tmp_path / "r.yaml", r), progress=False)
    packed = tmp_path / "out" / "sft" / "data" / "packed"
    stats = json.loads((packed / "stats.json").read_text())
    assert stats["split"]["train"]["conversations"] == 12
    assert res["stages"][0]["rows"] == stats["split"]["train"]["sequences"]
    assert "| dolly | 12 |" in (Path(res["final_model_dir"]) / "README.md").read_text()
    # a second resumed run reuses the packed data (same fingerprint) and the finished stage
    mtime = (packed / "stats.json").stat().st_mtime_ns
    run_recipe(tmp_path / "r.yaml", resume=True, progress=False)
    assert (packed / "stats.json").stat().st_mtime_ns == mtime


# Loss per step of a micro BLOOM (seed 0) on synthetic shards (seed 11), batch 4 = 2 x 2 accumulation,
# lr 3e-3 constant. Recorded from this implementation; a change means the math of training changed.
GOLDEN = [
    6.34259, 6.35182, 6.38654, 6.36644, 6.3681, 6.36888, 6.3597, 6.36804, 6.34028, 6.32097,
]


def test_golden_loss_curve(tmp_path, micro_model_dir, tiny_tokenizer):
    shards = write_shards(tmp_path / "shards", tiny_tokenizer, n_rows=40, seed=11)
    r = {"name": "golden", "base_model": str(micro_model_dir), "output_dir": str(tmp_path / "out"), "seed": 3,
         "defaults": {"global_batch_size": 4, "micro_batch_size": 2, "lr": 3e-3, "weight_decay": 0.1,
                      "max_grad_norm": 1.0},
         "stages": [{"name": "s", "epochs": 1, "data": {"shards": str(shards)}}]}
    res = run_recipe(write_recipe(tmp_path / "r.yaml", r), progress=False)
    losses = [x["loss"] for x in read_metrics(Path(res["stages"][0]["metrics"])) if x["kind"] == "train"]
    assert losses == pytest.approx(GOLDEN, rel=2e-4)
