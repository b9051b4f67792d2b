"""A model saved by bloomchat loads the same in other engines' readers: transformers 4.57 (a side
venv, as TGI and many users pin 4.x), a context length engines read, a hub-only base_model."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

SINGLE = [{"role": "user", "content": "你好，请介绍一下北京。"}]
MULTI = [{"role": "user", "content": "Hello, how are you?"},
         {"role": "assistant", "content": "I am fine, thank you."},
         {"role": "user", "content": "¿Dónde está la biblioteca?"}]
TEXTS = ["<human>: 你好\n<bot>: 北京是中国的首都</s>", "Bonjour, comment ça va ?  \n\n x 12345", "مرحبا 🙂 नमस्ते"]

#: Run inside the side venv: what transformers 4.x makes of the saved tokenizer.
_PROBE = r"""
import json, sys, transformers
from transformers import AutoTokenizer
req = json.loads(sys.stdin.read())
tok = AutoTokenizer.from_pretrained(req["dir"])
def ids(x):
    return list(x["input_ids"] if hasattr(x, "keys") else x)
print(json.dumps({
    "version": transformers.__version__, "class": type(tok).__name__,
    "texts": [tok(t, add_special_tokens=False)["input_ids"] for t in req["texts"]],
    "prompts": [ids(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True)) for m in req["chats"]],
    "rendered": [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in req["chats"]],
    "special": [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.padding_side],
}))
"""


def _tf4_python() -> str:
    """The side venv's python: $BLOOMCHAT_TF457_PYTHON, else ~/.cache/bloomchat/venv-tf457 (.ci/run makes it)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bloomchat" / "venv-tf457" / "bin" / "python"
    py = os.environ.get("BLOOMCHAT_TF457_PYTHON") or str(default)
    if not Path(py).exists():
        msg = f"transformers 4.57 side venv not found at {py} (.ci/run creates it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return py


def test_saved_tokenizer_is_identical_in_transformers_4_57(micro_model_dir):
    from transformers import AutoTokenizer

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    chats = [SINGLE, MULTI]
    proc = subprocess.run([_tf4_python(), "-c", _PROBE], input=json.dumps({"dir": str(micro_model_dir), "texts": TEXTS,
                          "chats": chats}), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    old = json.loads(proc.stdout.strip().splitlines()[-1])
    assert old["version"].startswith("4.57")
    tok = AutoTokenizer.from_pretrained(micro_model_dir)  # transformers 5, as bloomchat loads it
    assert old["class"] == "PreTrainedTokenizerFast"
    assert old["texts"] == [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert old["rendered"] == [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in chats]
    new_prompts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True) for m in chats]
    assert old["prompts"] == [list(p["input_ids"] if hasattr(p, "keys") else p) for p in new_prompts]
    assert old["special"] == [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.padding_side]


def test_saved_config_names_a_context_length(micro_model_dir):
    cfg = json.loads((micro_model_dir / "config.json").read_text())
    assert cfg["seq_length"] == 2048  # BLOOM's training length; llama.cpp and vLLM read seq_length
    tcfg = json.loads((micro_model_dir / "tokenizer_config.json").read_text())
    assert tcfg["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_a_length_the_config_has_is_kept(tmp_path, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    from bloomchat.models import save_pretrained

    m = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=512,
                                     rope_parameters={"rope_type": "default", "rope_theta": 100000.0}))
    save_pretrained(m, tiny_tokenizer, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["max_position_embeddings"] == 512 and "seq_length" not in cfg
    # transformers 4.x reads only the top-level rope_theta (else 10000, silently)
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] == 100000.0


@pytest.mark.parametrize("base,expect", [("bigscience/bloom-560m", "base_model: bigscience/bloom-560m"),
                                         ("/home/me/runs/base/model", None)])
def test_model_card_names_only_a_hub_base_model(base, expect, tmp_path):
    from bloomchat.train.report import model_card

    stage = SimpleNamespace(name="stage2", epochs=1, global_batch_size=8, lr=1e-5, lr_schedule="constant",
                            warmup_steps=0, weight_decay=0.1, max_grad_norm=1.0, prompt_loss_weight=0.0)
    recipe = SimpleNamespace(name="r", base_model=base, method="full", precision="fp32", path=None, lora=None,
                             vars={})
    card = model_card(recipe=recipe, stage=stage, data_stats={}, prepare_summary=None,
                      result={"init_from": base, "steps": 1, "tokens": 10, "loss_tokens": 5})
    header = card.split("---")[1]
    lines = [ln for ln in header.splitlines() if ln.startswith("base_model")]
    assert lines == ([expect] if expect else [])


def test_a_legacy_template_is_saved_as_the_current_one(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from bloomchat.chat_format import CHAT_TEMPLATE, LEGACY_CHAT_TEMPLATES
    from bloomchat.export import gguf_vocab
    from bloomchat.models.tokenizer import save_tokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.chat_template = LEGACY_CHAT_TEMPLATES[0]
    tok.save_pretrained(tmp_path / "old", save_jinja_files=False)  # as bloomchat saved before
    assert gguf_vocab(tmp_path / "old", 600).chat_template == CHAT_TEMPLATE  # the GGUF gets the current one
    save_tokenizer(tok, tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "tokenizer_config.json").read_text())["chat_template"]
    assert saved == CHAT_TEMPLATE
    multi = AutoTokenizer.from_pretrained(tmp_path / "new").apply_chat_template(MULTI, tokenize=False)
    assert "I am fine, thank you.</s>\n<human>:" in multi
