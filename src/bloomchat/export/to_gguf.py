"""Write a saved Hugging Face model as one GGUF file for llama.cpp (and Ollama, LM Studio ...).

    export_gguf("runs/demo/stage2/model", "model.gguf", outtype="f16")

Written with the `gguf` package's GGUFWriter. Supported: BloomForCausalLM and LlamaForCausalLM
(Llama, SmolLM/SmolLM2, TinyLlama ...). Tensor names come from gguf's own name map for the
architecture; two layouts differ from Hugging Face's and are rearranged here:

- BLOOM's fused query_key_value interleaves q, k, v per head ([head][q|k|v][dim]); llama.cpp's
  BLOOM graph takes all q rows, then all k, then all v.
- Llama's q_proj/k_proj rotate pairs (i, i + d/2) in Hugging Face (`rotate_half`); llama.cpp's
  rope rotates adjacent pairs (2i, 2i + 1), so the rows of each head are interleaved.

The file is written beside the target under a temporary name and renamed only when complete.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from bloomchat.errors import BloomchatError
from bloomchat.export.vocab import GGUFVocab, gguf_vocab

#: --outtype choices. f16 and q8_0 keep 1-D tensors (norms, biases) in f32, as llama.cpp does.
OUTTYPES = ("f32", "f16", "q8_0")
#: Keys a config may name its context length with (vLLM reads all of these).
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "seq_length", "max_seq_len",
                "max_sequence_length", "max_seq_length", "seq_len")
#: q8_0 quantises rows in blocks of 32 values (gguf.GGML_QUANT_SIZES); other rows stay f16.
Q8_BLOCK = 32


@dataclass
class ExportResult:
    path: Path
    arch: str
    outtype: str
    tensors: int
    context_length: int
    pre_tokenizer: str
    n_vocab: int
    bytes: int


def _read_config(d: Path) -> dict:
    p = d / "config.json"
    if not p.is_file():
        raise BloomchatError("not a Hugging Face model directory (no config.json)", where=str(d))
    return json.loads(p.read_text(encoding="utf-8"))


def _context_length(cfg: dict, override: int | None, where: str) -> int:
    if override:
        return int(override)
    for k in CONTEXT_KEYS:
        if cfg.get(k):
            return int(cfg[k])
    if cfg.get("model_type") == "bloom":
        return 2048  # BLOOM's pre-training length; models saved by bloomchat carry seq_length
    raise BloomchatError("config.json names no context length (max_position_embeddings, seq_length ...); "
                         "give --context-length", where=where)


def _state_dict(d: Path):
    """name -> float32 torch tensor, from model.safetensors or its shards."""
    from safetensors import safe_open

    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise BloomchatError("no *.safetensors weights (save the model with bloomchat or "
                             "save_pretrained(safe_serialization=True))", where=str(d))
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                out[k] = fh.get_tensor(k).float()
    return out


def _bloom_qkv(t, n_head: int):
    """[head][q|k|v][dim] rows (Hugging Face BLOOM) -> all q, all k, all v (llama.cpp)."""
    head_dim = t.shape[0] // (3 * n_head)
    rest = t.shape[1:]
    return t.reshape(n_head, 3, head_dim, *rest).transpose(0, 1).reshape(t.shape).contiguous()


def _rope_interleave(t, n_head: int):
    """Rows (i, i + d/2) of each head -> rows (2i, 2i + 1): Hugging Face rope -> llama.cpp rope."""
    rest = t.shape[1:]
    return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *rest).transpose(1, 2).reshape(t.shape).contiguous()


def _bloom(cfg: dict, w, writer, ctx: int) -> dict:
    n_embd = cfg.get("hidden_size", cfg.get("n_embed"))
    n_head = cfg.get("n_head", cfg.get("num_attention_heads"))
    writer.add_context_length(ctx)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(4 * n_embd)  # BLOOM's MLP is 4 x hidden
    writer.add_block_count(cfg["n_layer"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_eps(cfg.get("layer_norm_epsilon", 1e-5))
    if cfg.get("apply_residual_connection_post_layernorm"):
        raise BloomchatError("BLOOM with apply_residual_connection_post_layernorm=true is not what "
                             "llama.cpp's BLOOM graph computes", where="config.json")
    out = {}
    for name, t in w.items():
        short = re.sub(r"^transformer\.", "", name)
        if short.endswith("self_attention.query_key_value.weight") or short.endswith("self_attention.query_key_value.bias"):
            t = _bloom_qkv(t, n_head)
        out[short] = t
    return out


def _llama(cfg: dict, w, writer, ctx: int) -> dict:
    n_embd = cfg["hidden_size"]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or n_embd // n_head
    rope = cfg.get("rope_parameters") or {}
    rope_type = rope.get("rope_type") or (cfg.get("rope_scaling") or {}).get("rope_type") or "default"
    if rope_type != "default":
        raise BloomchatError(f"rope_type {rope_type!r} is not exported yet (only plain RoPE)", where="config.json")
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise BloomchatError("Llama with attention/MLP biases is not exported yet", where="config.json")
    writer.add_context_length(ctx)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    writer.add_vocab_size(cfg["vocab_size"])
    if head_dim != n_embd // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    out = {}
    for name, t in w.items():
        if name.endswith("self_attn.rotary_emb.inv_freq"):
            continue
        if name.endswith("self_attn.q_proj.weight"):
            t = _rope_interleave(t, n_head)
        elif name.endswith("self_attn.k_proj.weight"):
            t = _rope_interleave(t, n_kv)
        out[name] = t
    return out


#: Hugging Face architecture -> (gguf arch name, tensor preparation).
ARCHITECTURES = {
    "BloomForCausalLM": ("bloom", _bloom),
    "LlamaForCausalLM": ("llama", _llama),
}


def _gguf_name(name_map, name: str, where: str) -> str:
    base, dot, suffix = name.rpartition(".")
    if suffix not in ("weight", "bias"):
        base, suffix = name, ""
    mapped = name_map.get_name(base)
    if mapped is None:
        raise BloomchatError(f"tensor {name!r} has no GGUF name for this architecture", where=where)
    return f"{mapped}.{suffix}" if suffix else mapped


def _encode(t, outtype: str):
    """numpy data + ggml type for one tensor."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    a = t.numpy().astype(np.float32)
    if outtype == "f32" or a.ndim < 2:
        return a, GGMLQuantizationType.F32
    if outtype == "q8_0" and a.shape[-1] % Q8_BLOCK == 0:
        return quants.quantize(a, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return a.astype(np.float16), GGMLQuantizationType.F16


def _write_vocab(writer, v: GGUFVocab) -> None:
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(v.pre)
    writer.add_token_list(v.tokens)
    writer.add_token_types(v.types)
    writer.add_token_merges(v.merges)
    for value, add in ((v.bos_id, writer.add_bos_token_id), (v.eos_id, writer.add_eos_token_id),
                       (v.unk_id, writer.add_unk_token_id), (v.pad_id, writer.add_pad_token_id)):
        if value is not None:
            add(value)
    writer.add_add_bos_token(v.add_bos)
    writer.add_add_eos_token(v.add_eos)
    if v.chat_template:
        writer.add_chat_template(v.chat_template)


def export_gguf(model_dir: str | Path, out_path: str | Path, *, outtype: str = "f16",
                context_length: int | None = None, name: str | None = None) -> ExportResult:
    """Write `model_dir` (HF layout, safetensors, tokenizer.json) to the GGUF file `out_path`."""
    import gguf

    d = Path(model_dir).expanduser()
    if not d.is_dir():
        raise BloomchatError("model directory not found", where=str(d))
    if outtype not in OUTTYPES:
        raise BloomchatError(f"unknown outtype {outtype!r}; use one of {', '.join(OUTTYPES)}", where="--outtype")
    cfg = _read_config(d)
    archs = cfg.get("architectures") or []
    arch_name = next((a for a in archs if a in ARCHITECTURES), None)
    if arch_name is None:
        raise BloomchatError(f"architecture {', '.join(archs) or cfg.get('model_type') or '?'} cannot be "
                             f"exported to GGUF yet; supported: {', '.join(ARCHITECTURES)}",
                             where=str(d / "config.json"))
    gguf_arch, prepare = ARCHITECTURES[arch_name]
    ctx = _context_length(cfg, context_length, str(d / "config.json"))
    weights = _state_dict(d)
    embed_key = next((k for k in weights if k.endswith(("word_embeddings.weight", "embed_tokens.weight"))), None)
    if embed_key is None:
        raise BloomchatError("no token embedding found in the weights", where=str(d))
    n_vocab = int(weights[embed_key].shape[0])
    vocab = gguf_vocab(d, n_vocab)  # before any file is opened: tokenizer problems leave nothing behind

    out = Path(out_path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == gguf_arch)
    try:
        writer = gguf.GGUFWriter(str(tmp), gguf_arch)
        writer.add_name(name or (d.parent.name if d.name == "model" else d.name))
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
        if outtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        tensors = prepare(cfg, weights, writer, ctx)
        tied = cfg.get("tie_word_embeddings", True)
        n_layers = cfg.get("n_layer", cfg.get("num_hidden_layers"))
        name_map = gguf.get_tensor_name_map(arch_enum, n_layers)
        count = 0
        for hf_name, t in tensors.items():
            if tied and hf_name.endswith("lm_head.weight"):
                continue  # llama.cpp reuses token_embd when output.weight is absent
            data, qtype = _encode(t, outtype)
            writer.add_tensor(_gguf_name(name_map, hf_name, str(d)), data, raw_dtype=qtype)
            count += 1
        _write_vocab(writer, vocab)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise BloomchatError(f"could not write the GGUF file ({e.strerror or e})", where=str(out)) from None
        raise
    return ExportResult(path=out, arch=gguf_arch, outtype=outtype, tensors=count, context_length=ctx,
                        pre_tokenizer=vocab.pre, n_vocab=n_vocab, bytes=out.stat().st_size)
