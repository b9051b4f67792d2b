"""A non-BLOOM base (a tiny random Llama, built here): LoRA targets checked before training,
adapter-only checkpoints that still resume exactly, the chat template the model was trained in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import write_recipe, write_shards

from bloomchat.chat_format import CHAT_TEMPLATE
from bloomchat.errors import BloomchatError
from bloomchat.train import report, run_recipe
from bloomchat.train.report import LOSS_KEYS, read_metrics

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA_LINEAR = "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"


@pytest.fixture(scope="module")
def llama(tmp_path_factory, tiny_tokenizer_dir):
    """A 2-layer LlamaForCausalLM (hidden 64), its tokenizer carrying a ChatML template (as
    SmolLM2's does), and packed shards for it."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("llama")
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.chat_template = CHATML
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    shards = write_shards(root / "shards", tok, n_rows=12, seed=3, max_len=64)
    return {"root": root, "base": root / "base", "shards": shards}


def _recipe(llama, out: Path, **top) -> dict:
    r = {"name": "llama-lora", "base_model": str(llama["base"]), "output_dir": str(out), "seed": 1,
         "method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1,
                                    "target_modules": ["q_proj", "v_proj", "down_proj"]},
         "defaults": {"global_batch_size": 4, "micro_batch_size": 2, "lr": 1e-2, "save_every_steps": 2,
                      "keep_checkpoints": 5, "lr_schedule": "cosine", "lr_end_ratio": 0.1},
         "stages": [{"name": "sft", "epochs": 2, "data": {"shards": str(llama["shards"])}}]}
    r.update(top)
    return r


def test_dry_run_names_the_models_real_linear_layers(llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    r = _recipe(llama, tmp_path / "out")
    r["lora"]["target_modules"] = ["query_key_value", "q_proj"]  # BLOOM's name on a Llama
    with pytest.raises(BloomchatError) as e:
        run_recipe(write_recipe(tmp_path / "r.yaml", r), dry_run=True)
    msg = str(e.value)
    assert "query_key_value" in msg and LLAMA_LINEAR in msg and "lora.target_modules" in msg
    assert "'', " not in msg and ", 0," not in msg  # module names, not container indices
    assert not (tmp_path / "out").exists()
    # the same verdict as peft's on the real model: it refuses the missing name, takes the real ones
    m = AutoModelForCausalLM.from_pretrained(llama["base"])
    with pytest.raises(ValueError):
        get_peft_model(m, LoraConfig(target_modules=["query_key_value"]))
    r["lora"]["target_modules"] = ["q_proj", "down_proj"]
    plan = run_recipe(write_recipe(tmp_path / "r.yaml", r), dry_run=True)
    assert plan["base_checked"] is True
    get_peft_model(AutoModelForCausalLM.from_pretrained(llama["base"]), LoraConfig(target_modules=["q_proj", "down_proj"]))


def test_dry_run_refuses_a_quantized_base(llama, tmp_path):
    q = tmp_path / "gguf-base"
    shutil.copytree(llama["base"], q)
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gguf"}
    (q / "config.json").write_text(json.dumps(cfg))
    r = _recipe(llama, tmp_path / "out", base_model=str(q))
    with pytest.raises(BloomchatError, match="quantized.*bloomchat base import") as e:
        run_recipe(write_recipe(tmp_path / "r.yaml", r), dry_run=True)
    assert "base_model" in e.value.where


class _Stop(Exception):
    pass


def test_lora_checkpoints_hold_only_the_adapter_and_resume_exactly(llama, tmp_path, monkeypatch):
    from safetensors import safe_open
    from safetensors.torch import load_file

    ref = run_recipe(write_recipe(tmp_path / "ref.yaml", _recipe(llama, tmp_path / "ref")), progress=False)
    ck = tmp_path / "ref" / "sft" / "checkpoints" / "step-00000002"
    with safe_open(str(ck / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys)  # the adapter, not the frozen base
    assert len(keys) == 2 * 3 * 2  # A and B x 3 targets x 2 layers
    base_bytes = (llama["base"] / "model.safetensors").stat().st_size
    assert (ck / "model.safetensors").stat().st_size < base_bytes / 20
    assert (ck / "optimizer.bin").exists()

    orig = report.MetricsLog.write

    def stop_at_3(self, rec):
        orig(self, rec)
        if rec.get("step") == 3:
            raise _Stop

    r = write_recipe(tmp_path / "r.yaml", _recipe(llama, tmp_path / "out"))
    monkeypatch.setattr(report.MetricsLog, "write", stop_at_3)
    with pytest.raises(_Stop):
        run_recipe(r, progress=False)
    monkeypatch.setattr(report.MetricsLog, "write", orig)
    assert (tmp_path / "out" / "sft" / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    res = run_recipe(r, resume=True, progress=False)
    la = [{k: x.get(k) for k in LOSS_KEYS} for x in read_metrics(Path(res["stages"][0]["metrics"]))]
    lb = [{k: x.get(k) for k in LOSS_KEYS} for x in read_metrics(Path(ref["stages"][0]["metrics"]))]
    assert [x["step"] for x in la] == [x["step"] for x in lb] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(la, lb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6) and x["lr"] == pytest.approx(y["lr"], rel=1e-12)
    assert lb[-1]["lr"] < lb[0]["lr"] * 0.2  # cosine to 0.1 x lr really decayed
    wa, wb = load_file(str(Path(res["final_model_dir"]) / "model.safetensors")), load_file(
        str(Path(ref["final_model_dir"]) / "model.safetensors"))
    base = load_file(str(llama["base"] / "model.safetensors"))
    assert set(wa) == set(base)  # merged on export: a plain Llama
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-6)
    qk = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(wa[qk], base[qk])


def test_exported_chat_template_is_the_trained_format(llama, tmp_path):
    from transformers import AutoTokenizer

    msgs = [{"role": "user", "content": "Hi"}]
    for fmt, want in (("bloomchat", "<human>: Hi\n<bot>:"), ("base", "<|im_start|>user\nHi<|im_end|>\n"
                                                                     "<|im_start|>assistant\n")):
        r = _recipe(llama, tmp_path / fmt, chat_format=fmt)
        r["defaults"]["max_steps"] = 1
        res = run_recipe(write_recipe(tmp_path / f"{fmt}.yaml", r), progress=False)
        d = Path(res["final_model_dir"])
        tok = AutoTokenizer.from_pretrained(d)
        assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == want
        saved = json.loads((d / "tokenizer_config.json").read_text())["chat_template"]
        assert (saved == CHAT_TEMPLATE) == (fmt == "bloomchat")
        assert f"chat_format: {fmt}" in (d / "README.md").read_text()
