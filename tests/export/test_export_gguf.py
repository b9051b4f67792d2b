"""`bloomchat export gguf`: the file is read back by independent readers (transformers' GGUF loader,
gguf's GGUFReader) with the same tensors, the same tokenisation and the same greedy ids."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from bloomchat.cli import main
from bloomchat.errors import BloomchatError
from bloomchat.export import export_gguf, gguf_vocab, pre_tokenizer_type

SINGLE = [{"role": "user", "content": "你好，请介绍一下北京。"}]
MULTI = [{"role": "user", "content": "Hello, how are you?"},
         {"role": "assistant", "content": "I am fine, thank you."},
         {"role": "user", "content": "¿Dónde está la biblioteca?"}]
TEXTS = ["<human>: 你好，请介绍一下北京。\n<bot>: 北京是中国的首都", "Bonjour, comment ça va ?  \n\n x 12345",
         "مرحبا، كيف حالك؟ नमस्ते 🙂", "<human>: hi</s>\n<bot>: ok</s>\n<human>:"]


def _prompt_ids(tok, messages):
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _greedy(model, ids, n=12):
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=3)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def bloom_f32(sharp_bloom_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf_bloom") / "model.gguf"
    assert main(["export", "gguf", str(sharp_bloom_dir), "-o", str(out), "--outtype", "f32"]) == 0
    return out


@pytest.mark.parametrize("arch", ["bloom", "llama"])
def test_transformers_reads_back_equal_tensors_tokens_and_greedy_ids(arch, sharp_bloom_dir, sharp_llama_dir,
                                                                     bloom_f32, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = sharp_bloom_dir if arch == "bloom" else sharp_llama_dir
    gguf_path = bloom_f32 if arch == "bloom" else export_gguf(src, tmp_path / "model.gguf", outtype="f32").path
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    back = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32).eval()
    a, b = ref.state_dict(), back.state_dict()
    assert set(a) == set(b)
    for k in a:  # f32 all the way: bit-equal after BLOOM's qkv / Llama's rope rows are put back
        assert torch.equal(a[k], b[k]), k

    tok = AutoTokenizer.from_pretrained(src)
    tok_back = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    for text in TEXTS:
        assert tok_back(text, add_special_tokens=False).input_ids == tok(text, add_special_tokens=False).input_ids
    from bloomchat.chat_tokens import prompt_ids as engine_prompt_ids

    for messages in (SINGLE, MULTI):
        ids = _prompt_ids(tok, messages)
        # the template inside the GGUF renders the ids bloomchat's engine (and training) use
        assert _prompt_ids(tok_back, messages) == ids == engine_prompt_ids(tok, messages)
        want = _greedy(ref, ids)
        assert len(set(want)) >= 2  # the fixture's weights make greedy decoding move
        assert _greedy(back, ids) == want


def test_metadata_is_what_llama_cpp_reads(bloom_f32, sharp_bloom_dir, tiny_tokenizer):
    from gguf import GGUFReader

    r = GGUFReader(bloom_f32)
    f = lambda k: r.fields[k].contents()  # noqa: E731
    assert f("general.architecture") == "bloom"
    assert f("bloom.context_length") == 2048  # from config.json's seq_length, written by save_pretrained
    assert (f("bloom.embedding_length"), f("bloom.block_count"), f("bloom.attention.head_count")) == (64, 2, 4)
    assert f("tokenizer.ggml.model") == "gpt2" and f("tokenizer.ggml.pre") == "gpt-2"
    tokens, types = f("tokenizer.ggml.tokens"), f("tokenizer.ggml.token_type")
    rows = json.loads((sharp_bloom_dir / "config.json").read_text())["vocab_size"]
    assert len(tokens) == len(types) == rows > len(tiny_tokenizer)  # padded rows, as the embedding
    vocab = tiny_tokenizer.get_vocab()
    assert all(tokens[i] == t for t, i in vocab.items())
    assert [types[i] for i in range(4)] == [3, 3, 3, 3]  # <unk> <s> </s> <pad>: control
    assert set(types[len(vocab):]) == {5} and set(types[4:len(vocab)]) == {1}
    merges = f("tokenizer.ggml.merges")
    assert merges[0] == " ".join(json.loads((sharp_bloom_dir / "tokenizer.json").read_text())["model"]["merges"][0])
    assert (f("tokenizer.ggml.bos_token_id"), f("tokenizer.ggml.eos_token_id"),
            f("tokenizer.ggml.padding_token_id")) == (1, 2, 3)
    assert f("tokenizer.ggml.add_bos_token") is False
    assert f("tokenizer.chat_template") == tiny_tokenizer.chat_template
    names = {t.name for t in r.tensors}
    assert {"token_embd.weight", "token_embd_norm.bias", "blk.1.attn_qkv.weight", "output_norm.weight"} <= names
    assert "output.weight" not in names  # tied: llama.cpp reuses token_embd


def test_f16_and_q8_0_types_and_error(sharp_bloom_dir, tmp_path):
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader, quants
    from safetensors.torch import load_file

    emb = load_file(sharp_bloom_dir / "model.safetensors")["transformer.word_embeddings.weight"].numpy()
    for outtype, qtype, tol in (("f16", Q.F16, 1e-3), ("q8_0", Q.Q8_0, 0.01)):
        p = export_gguf(sharp_bloom_dir, tmp_path / f"{outtype}.gguf", outtype=outtype).path
        t = {x.name: x for x in GGUFReader(p).tensors}
        assert t["token_embd.weight"].tensor_type == qtype
        assert t["token_embd_norm.weight"].tensor_type == Q.F32  # 1-D stays f32
        got = quants.dequantize(t["token_embd.weight"].data, qtype).reshape(emb.shape)
        assert np.abs(got - emb).max() <= tol * np.abs(emb).max()
        assert np.abs(got - emb).max() > 0


def test_pre_tokenizer_is_chosen_from_the_pipeline():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    from bloomchat.export.vocab import BLOOM_SPLIT, LLAMA3_SPLIT

    def tj(pre):
        t = Tokenizer(models.BPE())
        t.pre_tokenizer = pre
        from tokenizers import decoders

        t.decoder = decoders.ByteLevel()
        return json.loads(t.to_str())

    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    assert pre_tokenizer_type(tj(pre_tokenizers.ByteLevel(add_prefix_space=False))) == "gpt-2"
    assert pre_tokenizer_type(tj(pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False)]))) == "smollm"
    assert pre_tokenizer_type(tj(pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(BLOOM_SPLIT), "isolated"), bl]))) == "bloom"
    assert pre_tokenizer_type(tj(pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"), bl]))) == "llama-bpe"
    with pytest.raises(BloomchatError, match="no pre-tokenizer known"):
        pre_tokenizer_type(tj(pre_tokenizers.ByteLevel(add_prefix_space=True)))
    with pytest.raises(BloomchatError, match="no pre-tokenizer known"):
        pre_tokenizer_type(tj(pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\w+"), "isolated"), bl])))


def test_unsupported_architecture_is_one_line_and_leaves_nothing(sharp_bloom_dir, tmp_path, capsys):
    d = tmp_path / "gpt2"
    shutil.copytree(sharp_bloom_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    assert main(["export", "gguf", str(d), "-o", str(out / "m.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GPT2LMHeadModel cannot be exported" in err
    assert not out.exists() or not any(out.iterdir())


def test_tokenizer_problem_is_found_before_writing(sharp_bloom_dir, tmp_path):
    d = tmp_path / "spm"
    shutil.copytree(sharp_bloom_dir, d)
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(BloomchatError, match="no pre-tokenizer known"):
        export_gguf(d, tmp_path / "o" / "m.gguf")
    assert not (tmp_path / "o").exists()  # checked before anything is written: no partial or temp file


def test_modelfile_beside_the_gguf(bloom_f32, sharp_llama_dir, tmp_path):
    mf = (bloom_f32.parent / "Modelfile").read_text()
    assert mf.startswith("FROM ./model.gguf\n")
    from bloomchat.infer import GenerationParams

    d = GenerationParams()  # the engine's defaults, in Ollama's names
    for line in (f"PARAMETER temperature {d.temperature}", f"PARAMETER top_p {d.top_p}", f"PARAMETER top_k {d.top_k}",
                 f"PARAMETER repeat_penalty {d.repetition_penalty}", f"PARAMETER num_predict {d.max_new_tokens}",
                 'PARAMETER stop "</s>"'):
        assert line in mf.splitlines()
    assert '{{ else if eq $m.Role "assistant" }}<bot>: {{ $m.Content }}</s>' in mf
    assert mf.split('TEMPLATE """')[1].split('"""')[0].endswith("\n<bot>:")  # the generation prompt
    # another chat template (not BLOOMChat's): Ollama takes the one inside the GGUF
    d = tmp_path / "chatml"
    shutil.copytree(sharp_llama_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert main(["export", "gguf", str(d), "-o", str(tmp_path / "c" / "c.gguf")]) == 0
    assert "TEMPLATE" not in (tmp_path / "c" / "Modelfile").read_text()
    assert gguf_vocab(d, 600).chat_template == cfg["chat_template"]
