"""Tiny BLOOM models and tokenizers built here load with plain transformers and render the template."""

import pytest
import torch

from bloomchat.errors import BloomchatError
from bloomchat.models import build_bloom, load_model, load_tokenizer, save_pretrained, tokenizer_fingerprint
from bloomchat.models.tokenizer import train_bpe_tokenizer


def test_saved_model_loads_with_plain_transformers_and_generates(micro_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (micro_model_dir / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(micro_model_dir)
    model = AutoModelForCausalLM.from_pretrained(micro_model_dir)
    assert model.config.model_type == "bloom"
    prompt = tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<human>: 你好\n<bot>:"
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_byte_level_tokenizer_roundtrips_every_script(tiny_tokenizer):
    for text in ["北京是中国的首都", "مرحبا بالعالم", "नमस्ते दुनिया", "Xin chào thế giới", "emoji 🙂 ok"]:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tiny_tokenizer.unk_token_id not in ids
        assert tiny_tokenizer.decode(ids) == text


def test_special_token_ids_follow_bloom(tiny_tokenizer):
    assert (tiny_tokenizer.unk_token_id, tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id,
            tiny_tokenizer.pad_token_id) == (0, 1, 2, 3)


def test_fingerprint_survives_save_and_load_and_tells_tokenizers_apart(tiny_tokenizer, tmp_path):
    """Shards record the fingerprint of the tokenizer object that packed them; training compares it
    with the tokenizer loaded from the model folder, so a save/load round trip must keep it."""
    other = train_bpe_tokenizer(["completely different corpus of text"] * 10, vocab_size=300, min_frequency=1)
    save_pretrained(build_bloom("micro", vocab_size=len(other)), other, tmp_path)
    assert tokenizer_fingerprint(load_tokenizer(tmp_path)) == tokenizer_fingerprint(other)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tiny_tokenizer)


def test_presets_have_the_documented_shapes():
    model = build_bloom("tiny", vocab_size=1000)
    assert (model.config.hidden_size, model.config.n_layer, model.config.n_head) == (256, 4, 8)
    with pytest.raises(BloomchatError, match="unknown model size preset"):
        build_bloom("huge", vocab_size=1000)


def test_same_seed_same_weights():
    a, b = build_bloom("micro", 500, seed=3), build_bloom("micro", 500, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(BloomchatError, match="not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BloomchatError, match="no config.json"):
        load_model(tmp_path / "empty")


def test_load_roundtrip_keeps_weights(tmp_path, tiny_tokenizer):
    model = build_bloom("micro", len(tiny_tokenizer), seed=1)
    save_pretrained(model, tiny_tokenizer, tmp_path / "m")
    again = load_model(tmp_path / "m")
    tok = load_tokenizer(tmp_path / "m")
    assert tok.chat_template
    for (k, v) in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_uncached_hub_name_offline_fails_fast_with_a_clear_message(monkeypatch):
    import bloomchat.models.loading as loading

    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(BloomchatError, match="not in the local Hugging Face cache and the hub cannot be reached"):
        load_tokenizer("no-such-org/no-such-model-xyz")
    with pytest.raises(BloomchatError, match="not in the local Hugging Face cache"):
        load_model("no-such-org/no-such-model-xyz")


def test_a_tokenizer_file_instead_of_its_folder_is_named(micro_model_dir):
    with pytest.raises(BloomchatError, match="got a file"):
        load_tokenizer(micro_model_dir / "tokenizer.json")


def test_a_training_stage_folder_points_to_its_model(tmp_path, micro_model_dir):
    import shutil

    stage = tmp_path / "stage2"
    shutil.copytree(micro_model_dir, stage / "model")
    for load in (load_model, load_tokenizer):
        with pytest.raises(BloomchatError, match=r"training stage folder.*stage2/model"):
            load(stage)


def test_saved_layout_is_what_vllm_and_tgi_read(micro_model_dir):
    """The names, shapes and config keys vLLM's BLOOM loader (vllm/model_executor/models/bloom.py)
    reads: weights under `transformer.` (it adds the prefix where missing), `lm_head.weight` skipped
    because the head is the tied input embedding, fused QKV of 3 x hidden rows; and the chat
    template in tokenizer_config.json, which vLLM's and TGI's chat endpoints apply."""
    import json

    from safetensors import safe_open

    cfg = json.loads((micro_model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["BloomForCausalLM"] and cfg["model_type"] == "bloom"
    assert cfg.get("tie_word_embeddings", True) is True  # vLLM has no separate head to load for BLOOM
    hidden, layers = cfg["hidden_size"], cfg["n_layer"]
    block = ["input_layernorm", "self_attention.query_key_value", "self_attention.dense",
             "post_attention_layernorm", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"]
    want = {f"transformer.{m}.{p}" for m in ("word_embeddings_layernorm", "ln_f") for p in ("weight", "bias")}
    want |= {"transformer.word_embeddings.weight"}
    want |= {f"transformer.h.{i}.{m}.{p}" for i in range(layers) for m in block for p in ("weight", "bias")}
    with safe_open(str(micro_model_dir / "model.safetensors"), "pt") as f:
        names = {n if n.startswith("transformer.") else "transformer." + n for n in f.keys()} - {"transformer.lm_head.weight"}
        assert names == want
        assert f.get_slice("transformer.h.0.self_attention.query_key_value.weight").get_shape() == [3 * hidden, hidden]
    tok_cfg = json.loads((micro_model_dir / "tokenizer_config.json").read_text())
    assert "<bot>:" in tok_cfg["chat_template"] and (micro_model_dir / "tokenizer.json").exists()
