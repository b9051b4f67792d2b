"""`load_chat_model`: one call for every way of getting a chat model (local, int8, remote engine).

    cm = load_chat_model("out/stage2")                                 # bf16 on GPU, fp32 on CPU
    cm = load_chat_model("out/stage2", quantize="int8")                # dynamic int8 (CPU) / bitsandbytes (GPU)
    cm = load_chat_model("my-model", backend="openai", base_url="http://vllm:8000/v1")
    cm = load_chat_model("out/stage2", engine="vllm")                  # vLLM's scheduler in-process
"""

from __future__ import annotations

from pathlib import Path

from bloomchat.errors import BloomchatError

QUANTIZE = (None, "none", "int8")
BACKENDS = ("local", "openai")
#: builtin: bloomchat's continuous batching on transformers (needs nothing extra);
#: vllm: vLLM's AsyncLLM in this process (bloomchat.infer.vllm_engine).
ENGINES = ("builtin", "vllm")


def _resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BloomchatError(f"device {device!r} asked for, but no CUDA GPU is available", where="--device")
    return device


def quantize_dynamic_int8(model):
    """Linear layers to int8 weights with int8 dynamic activations (CPU; fbgemm/qnnpack kernels)."""
    import warnings

    import torch

    with warnings.catch_warnings():  # torch.ao.quantization warns it will move to torchao; it still works
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model.float(), {torch.nn.Linear}, dtype=torch.qint8)


def _load_bnb_int8(name_or_path: str, device: str):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise BloomchatError("--quantize int8 on a GPU needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    try:
        return AutoModelForCausalLM.from_pretrained(
            name_or_path, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map={"": device})
    except (OSError, ValueError) as e:
        raise BloomchatError(f"cannot load model: {str(e).splitlines()[0]}", where=name_or_path) from None


def load_chat_model(path_or_name: str | Path, *, quantize: str | None = None, device: str | None = None,
                    dtype: str = "auto", backend: str = "local", base_url: str | None = None,
                    api_key: str | None = None, max_batch_size: int = 16, name: str | None = None,
                    engine: str = "builtin"):
    """A ChatModel (or, with backend="openai", an OpenAIChatClient with the same reply/stream API).

    dtype "auto" is bf16 on a GPU and float32 on CPU (CPU bf16 matmuls are slower than fp32).
    engine "vllm" runs the same ChatModel over vLLM (guards, server and eval unchanged).
    """
    from bloomchat.models import load_model, load_tokenizer

    if engine not in ENGINES:
        raise BloomchatError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}", where="--engine")
    if backend not in BACKENDS:
        raise BloomchatError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}", where="--backend")
    if backend == "openai":
        from bloomchat.infer.client import OpenAIChatClient

        if not base_url:
            raise BloomchatError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        return OpenAIChatClient(base_url, model=str(path_or_name), api_key=api_key)
    if quantize not in QUANTIZE:
        raise BloomchatError(f"unknown quantization {quantize!r}; use int8 or leave it out", where="--quantize")
    dev = _resolve_device(device)
    label = name or (Path(str(path_or_name)).name if Path(str(path_or_name)).exists() else str(path_or_name))
    resolved = dtype if dtype != "auto" else ("bf16" if dev.startswith("cuda") else "float32")
    if engine == "vllm":
        return _vllm_chat_model(str(path_or_name), quantize=quantize, dtype=resolved, label=label,
                                max_batch_size=max_batch_size)
    tokenizer = load_tokenizer(path_or_name)
    if quantize == "int8" and dev.startswith("cuda"):
        model = _load_bnb_int8(str(path_or_name), dev)
    else:
        if quantize == "int8":
            resolved = "float32"  # dynamic quantization starts from float32 weights
        model = load_model(path_or_name, dtype=resolved, device=dev)
        if quantize == "int8":
            model = quantize_dynamic_int8(model)
    from bloomchat.infer.chat_model import ChatModel

    return ChatModel(model, tokenizer, name=label, max_batch_size=max_batch_size)


def _vllm_chat_model(path: str, *, quantize, dtype: str, label: str, max_batch_size: int):
    """A ChatModel whose engine is vLLM: bloomchat's tokenizer builds the prompt ids, vLLM holds the
    weights (they are not loaded a second time here)."""
    from transformers import AutoConfig, GenerationConfig

    from bloomchat.infer.chat_model import ChatModel, context_length, eos_token_ids
    from bloomchat.infer.vllm_engine import VllmEngine
    from bloomchat.models import load_tokenizer
    from bloomchat.models.loading import dtype_name

    if quantize == "int8":
        raise BloomchatError("--quantize int8 is the built-in engine's; with --engine vllm serve a quantized "
                             "checkpoint (vLLM reads its quantization from the model's config)", where="--quantize")
    tokenizer = load_tokenizer(path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise BloomchatError(f"cannot read the model's config: {str(e).splitlines()[0]}", where=path) from None
    try:
        gen = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: the tokenizer's EOS ends replies
        gen = None
    context = context_length(config)
    engine = VllmEngine(path, tokenizer, eos_token_ids=eos_token_ids(gen, tokenizer), max_batch_size=max_batch_size,
                        context=context, dtype=dtype_name(dtype))
    return ChatModel(None, tokenizer, name=label, context=context, engine=engine)
