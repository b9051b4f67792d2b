"""`bloomchat serve` as a user starts it: a child process on a free port, then Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import openai

LAUNCH = "import sys, bloomchat.cli as c; sys.exit(c.main(sys.argv[1:]))"


def test_infer_serve_verb_end_to_end(micro_model_dir):
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", BLOOMCHAT_API_KEYS="sk-env")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "serve", str(micro_model_dir), "--port", "0",
                             "--api-key", "sk-flag", "--served-model-name", "mini", "--threads", "1", "--top-k", "7"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url, seen = None, []
        deadline = time.time() + 90
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else None
        assert url, "".join(seen)
        assert any("model 'mini'" in s and "API keys required" in s for s in seen)
        assert httpx.get(url + "/health").json() == {"status": "ok", "model": "mini"}  # open, minimal
        assert httpx.get(url + "/metrics").status_code == 401  # counts need the key (no --public-metrics)
        assert httpx.get(url + "/v1/web-config").json()["defaults"]["top_k"] == 7  # --top-k: the server default
        for key in ("sk-flag", "sk-env"):  # keys from the flag and from the environment
            c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
            r = c.chat.completions.create(model="mini", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
            assert r.usage.completion_tokens <= 4
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert "<title>" in httpx.get(url + "/").text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
