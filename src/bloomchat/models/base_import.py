"""Bring a pretrained model in as a plain base: a GGUF file or a local HF checkpoint folder ->
HF safetensors + tokenizer (with its chat template), nothing quantized left in config.json.

    from bloomchat.models.base_import import import_base
    import_base("SmolLM2-135M-Instruct.Q4_1.gguf", "base/", dtype="fp32")

Why: transformers reads a GGUF by de-quantising it, but the model it returns is still marked
`quantization_config: {quant_method: gguf}`; saved as is, every later `save_pretrained` refuses
("quantized with gguf and is not serializable"), so a fine-tune fails only when it exports. The
weights in memory are ordinary tensors by then, so the mark is dropped and the checkpoint written
plainly. `IMPORT_RECORD` (next to config.json) says where the weights came from (file, sha256,
dtype), so a result can be traced to the exact file.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from bloomchat.errors import BloomchatError

IMPORT_RECORD = "bloomchat_import.json"
GGUF_MAGIC = b"GGUF"
_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}
# llama.cpp spells some architectures differently from transformers' GGUF mapping
_ARCH_ALIASES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss",
                 "minimax-m2": "minimax_m2", "t5encoder": "t5"}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def gguf_architecture(path: Path) -> str:
    """`general.architecture` of a GGUF file, read from its header (no tensor is loaded)."""
    from gguf import GGUFReader  # a dependency: transformers' GGUF loader reads through it too

    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
    except KeyError:
        raise BloomchatError("GGUF file has no general.architecture field", where=str(path)) from None
    except Exception as e:  # a truncated or corrupt file
        raise BloomchatError(f"cannot read GGUF header: {str(e).splitlines()[0]}", where=str(path)) from None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def supported_gguf_architectures() -> list[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]


def _check_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BloomchatError("output exists and is a file", where=str(out))
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BloomchatError("output directory is not empty (add --force to overwrite)", where=str(out))


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[base import] {msg}", file=sys.stderr, flush=True)


def import_base(src: str | Path, out_dir: str | Path, *, dtype: str = "fp32", force: bool = False,
                quiet: bool = False) -> dict:
    """Import a GGUF file or a local HF checkpoint folder into `out_dir`; returns the import record."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bloomchat.models.loading import save_pretrained, strip_quantization

    src, out = Path(src).expanduser(), Path(out_dir).expanduser()
    if dtype not in _DTYPES:
        raise BloomchatError(f"unknown dtype {dtype!r}; use fp32 or bf16")
    if not src.exists():
        raise BloomchatError("file or directory not found", where=str(src))
    _check_output(out, force)
    if src.resolve() == out.resolve():
        raise BloomchatError("output directory is the source itself", where=str(out))
    torch_dtype = getattr(torch, _DTYPES[dtype])
    t0 = time.time()
    record: dict = {"source": str(src.resolve()), "dtype": _DTYPES[dtype]}
    if src.is_file():
        if not is_gguf(src):
            raise BloomchatError("not a GGUF file (no GGUF magic bytes) and not a checkpoint folder", where=str(src))
        arch = gguf_architecture(src)
        supported = supported_gguf_architectures()
        if _ARCH_ALIASES.get(arch, arch) not in supported:
            raise BloomchatError(f"GGUF architecture {arch!r} is not supported by transformers' GGUF loader "
                                 f"(supported: {', '.join(supported)})", where=str(src))
        _say(f"sha256 of {src.name} ...", quiet)
        record.update(format="gguf", sha256=sha256_file(src), gguf_architecture=arch)
        folder, kwargs = src.parent, {"gguf_file": src.name}
    else:
        if not (src / "config.json").exists():
            raise BloomchatError("not a GGUF file and not a Hugging Face checkpoint folder (no config.json)",
                                 where=str(src))
        record.update(format="hf", sha256=_folder_digest(src))
        folder, kwargs = src, {}
    _say(f"loading {src.name} ({record['format']}) as {_DTYPES[dtype]} ...", quiet)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype, **kwargs)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise BloomchatError(f"cannot load: {str(e).splitlines()[0]}", where=str(src)) from None
    removed = strip_quantization(model)
    model = model.to(torch_dtype)
    n_params = sum(p.numel() for p in model.parameters())
    record.update(architecture=type(model).__name__, model_type=model.config.model_type, parameters=n_params,
                  removed_quantization_config=removed,
                  chat_template="own" if getattr(tok, "chat_template", None) else "bloomchat (base had none)")
    _say(f"writing {out} ({n_params / 1e6:.1f}M parameters, {type(model).__name__}) ...", quiet)
    if out.is_dir() and force:
        for p in out.iterdir():  # stale shards of an earlier import must not be mixed in
            if p.is_file() and (p.suffix in (".safetensors", ".json", ".jinja", ".txt", ".model")):
                p.unlink()
    save_pretrained(model, tok, out)
    import transformers

    import bloomchat

    record.update(seconds=round(time.time() - t0, 1), transformers=transformers.__version__,
                  bloomchat=bloomchat.__version__)
    (out / IMPORT_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    _say(f"done in {record['seconds']} s: {out}", quiet)
    return record


def _folder_digest(folder: Path) -> str:
    """sha256 over the weight files of a checkpoint folder (name + content), in name order."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in (".safetensors", ".bin"):
            h.update(p.name.encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()
