"""Load a base or chat model by hub name or local dir, with one clear error when it is missing.

Nothing here downloads when HF_HUB_OFFLINE=1; a hub name that is not cached then fails with a
message that says so, rather than a stack of HTTP errors.
"""

from __future__ import annotations

from pathlib import Path

from bloomchat.errors import BloomchatError
from bloomchat.models.tokenizer import ensure_chat_template

_DTYPES = {"float32": "float32", "fp32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "fp16": "float16", "float16": "float16", "auto": "auto"}


def _check_exists(name_or_path: str | Path, what: str) -> str:
    s = str(name_or_path)
    p = Path(s).expanduser()
    looks_local = s.startswith((".", "/", "~")) or p.exists() or s.count("/") > 1
    if looks_local and not p.exists():
        raise BloomchatError(f"{what} directory not found", where=s)
    if p.exists() and p.is_dir() and not (p / "config.json").exists() and what == "model":
        raise BloomchatError("not a Hugging Face model directory (no config.json)", where=s)
    return str(p) if p.exists() else s


def load_tokenizer(name_or_path: str | Path):
    """AutoTokenizer with the BLOOMChat chat template added when the tokenizer has none."""
    from transformers import AutoTokenizer

    src = _check_exists(name_or_path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise BloomchatError(f"cannot load tokenizer: {str(e).splitlines()[0]}", where=src) from None
    return ensure_chat_template(tok)


def load_model(name_or_path: str | Path, *, dtype: str = "float32", device: str | None = None):
    """AutoModelForCausalLM in the given dtype (float32, bf16, fp16, auto)."""
    import torch
    from transformers import AutoModelForCausalLM

    src = _check_exists(name_or_path, "model")
    if dtype not in _DTYPES:
        raise BloomchatError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    torch_dtype = _DTYPES[dtype] if dtype == "auto" else getattr(torch, _DTYPES[dtype])
    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch_dtype)
    except (OSError, ValueError) as e:
        raise BloomchatError(f"cannot load model: {str(e).splitlines()[0]}", where=src) from None
    if device:
        model.to(device)
    return model


def save_pretrained(model, tokenizer, out_dir: str | Path) -> Path:
    """Save model (safetensors) and tokenizer (with chat template) in the standard HF layout."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    ensure_chat_template(tokenizer)
    tokenizer.save_pretrained(out)
    return out
