"""Load a base or chat model by hub name or local dir, with one clear error when it is missing.

A hub name is looked up in the local Hugging Face cache only when the hub cannot be reached
(or HF_HUB_OFFLINE=1): one quick connection test instead of transformers' retries, which take
about 45 s on an offline machine before failing.
"""

from __future__ import annotations

import functools
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


def load_model(name_or_path: str | Path, *, dtype: str = "float32", device: str | None = None):
    """AutoModelForCausalLM in the given dtype (float32, bf16, fp16, auto)."""
    import torch
    from transformers import AutoModelForCausalLM

    src = _check_exists(name_or_path, "model")
    if dtype not in _DTYPES:
        raise BloomchatError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    torch_dtype = _DTYPES[dtype] if dtype == "auto" else getattr(torch, _DTYPES[dtype])
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
        from bloomchat.models.base_import import strip_quantization

        strip_quantization(model)


def save_pretrained(model, tokenizer, out_dir: str | Path) -> Path:
    """Save model (safetensors) and tokenizer (with chat template) in the standard HF layout."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    return out
