"""Load a base or chat model by hub name or local dir, with one clear error when it is missing.

A hub name is looked up in the local Hugging Face cache only when the hub cannot be reached
(or HF_HUB_OFFLINE=1): one quick connection test instead of transformers' retries, which take
about 45 s on an offline machine before failing.
"""

from __future__ import annotations

import functools
import json
import socket
from pathlib import Path
from urllib.parse import urlparse

from bloomchat.errors import BloomchatError
from bloomchat.models.tokenizer import ensure_chat_template, save_tokenizer

_DTYPES = {"float32": "float32", "fp32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "fp16": "float16", "float16": "float16", "auto": "auto"}


def _check_exists(name_or_path: str | Path, what: str) -> str:
    s = str(name_or_path)
    p = Path(s).expanduser()
    looks_local = s.startswith((".", "/", "~")) or p.exists() or s.count("/") > 1
    if looks_local and not p.exists():
        raise BloomchatError(f"{what} directory not found", where=s)
    if p.is_file():
        raise BloomchatError(f"expected a {what} directory in Hugging Face layout, got a file "
                             f"(give the folder that holds it)", where=s)
    if p.is_dir() and not (p / "config.json").exists() and (p / "model" / "config.json").exists():
        raise BloomchatError(f"this is a training stage folder, not a model: the {what} is in {p / 'model'}", where=s)
    if p.exists() and p.is_dir() and not (p / "config.json").exists() and what == "model":
        raise BloomchatError("not a Hugging Face model directory (no config.json)", where=s)
    return str(p) if p.exists() else s


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub endpoint accepts a TCP connection (False when HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_kwargs(src: str) -> dict:
    """`local_files_only=True` for a hub name when the hub is out of reach; nothing for local dirs."""
    if Path(src).exists() or hub_reachable():
        return {}
    return {"local_files_only": True}


def _load_error(what: str, src: str, err: Exception, kwargs: dict) -> BloomchatError:
    if kwargs.get("local_files_only"):
        return BloomchatError(f"{what} is not in the local Hugging Face cache and the hub cannot be reached "
                              "(offline): download it on a connected machine, or give a local directory", where=src)
    return BloomchatError(f"cannot load {what}: {str(err).splitlines()[0]}", where=src)


def load_tokenizer(name_or_path: str | Path):
    """AutoTokenizer with the BLOOMChat chat template added when the tokenizer has none."""
    from transformers import AutoTokenizer

    src = _check_exists(name_or_path, "tokenizer")
    kwargs = _hub_kwargs(src)
    try:
        tok = AutoTokenizer.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as e:
        raise _load_error("tokenizer", src, e, kwargs) from None
    return ensure_chat_template(tok)


def dtype_name(dtype: str) -> str:
    """The canonical name (float32, bfloat16, float16, auto) of a dtype as users write it (bf16, fp16 ...)."""
    if dtype not in _DTYPES:
        raise BloomchatError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_model(name_or_path: str | Path, *, dtype: str = "float32", device: str | None = None):
    """AutoModelForCausalLM in the given dtype (float32, bf16, fp16, auto)."""
    import torch
    from transformers import AutoModelForCausalLM

    src = _check_exists(name_or_path, "model")
    name = dtype_name(dtype)
    torch_dtype = name if name == "auto" else getattr(torch, name)
    kwargs = _hub_kwargs(src)
    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as e:
        raise _load_error("model", src, e, kwargs) from None
    _drop_gguf_mark(model)
    if device:
        model.to(device)
    return model


def _drop_gguf_mark(model) -> None:
    """A checkpoint converted from GGUF by hand keeps `quantization_config: {quant_method: gguf}`
    although its weights are plain tensors; transformers then refuses to save it (after a whole
    fine-tune). Such a base loads here as the plain model it is (`bloomchat base import` writes
    one without the mark)."""
    qc = getattr(model.config, "quantization_config", None)
    if qc is None:
        return
    method = (qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None))
    if str(getattr(method, "value", method)).lower() == "gguf":
        strip_quantization(model)


def strip_quantization(model) -> dict | None:
    """Drop the `gguf` quantization mark from a model whose weights are already de-quantised.
    Returns the removed config (for the record). Other quantization methods hold packed weights:
    they are de-quantised by transformers when it can, else refused."""
    qc = getattr(model.config, "quantization_config", None)
    if qc is None:
        return None
    qd = qc if isinstance(qc, dict) else qc.to_dict()
    method = str(qd.get("quant_method", "")).lower().split(".")[-1]
    if method != "gguf":
        try:
            model.dequantize()
        except Exception as e:
            raise BloomchatError(f"checkpoint is quantized with {method!r} and cannot be de-quantised here "
                                 f"({str(e).splitlines()[0]}); import the unquantized weights") from None
    for attr in ("hf_quantizer",):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return {k: str(getattr(v, "value", v)) for k, v in qd.items()}


def save_pretrained(model, tokenizer, out_dir: str | Path, *, state_dict: dict | None = None) -> Path:
    """Save model (safetensors) and tokenizer (with chat template) in the standard HF layout.

    A config without a context-length key gets `seq_length` = 2048, so that vLLM, llama.cpp and
    TGI agree on the window instead of each guessing its own. `state_dict`: the weights to write
    when the model object holds only shards (FSDP / ZeRO-3, gathered by the caller).
    """
    # Keys engines read as the context length (vLLM tries all; llama.cpp's converter reads
    # `seq_length` for BLOOM). BLOOM (ALiBi, no position table) was pre-trained on 2048-token
    # sequences and BLOOMChat tuned at 2048, but its config names no length, so each engine guessed
    # (llama.cpp: the hidden size, 256 on the demo model).
    length_keys = ("max_position_embeddings", "n_positions", "seq_length", "max_seq_len",
                   "max_sequence_length", "max_seq_length", "seq_len")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = getattr(model, "config", None)
    if cfg is not None and not any(getattr(cfg, k, None) for k in length_keys):
        cfg.seq_length = 2048
    model.save_pretrained(out, safe_serialization=True, **({} if state_dict is None else {"state_dict": state_dict}))
    # transformers 5 keeps RoPE settings only in `rope_parameters`; 4.x (TGI, many users) reads the
    # top-level `rope_theta` / `rope_scaling` and would silently fall back to theta 10000 (SmolLM2
    # uses 100000): write both spellings.
    cfg_path = out / "config.json"
    conf = json.loads(cfg_path.read_text(encoding="utf-8"))
    rope = conf.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in conf:
        conf["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default" and not conf.get("rope_scaling"):
            conf["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
        cfg_path.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_tokenizer(tokenizer, out)
    return out
