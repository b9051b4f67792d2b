"""`bloomchat serve` as a user starts it: a child process on a free port, then Ctrl-C."""

from __future__ import annotations

import httpx
import openai

from server_helpers import start_serve


def test_infer_serve_verb_end_to_end(micro_model_dir):
    with start_serve(micro_model_dir, "--api-key", "sk-flag", "--served-model-name", "mini", "--threads", "1",
                     "--top-k", "7", env={"BLOOMCHAT_API_KEYS": "sk-env"}) as server:
        url = server.url
        assert "model 'mini'" in server.output() and "API keys required" in server.output()
        assert httpx.get(url + "/health").json() == {"status": "ok", "model": "mini"}  # open, minimal
        assert httpx.get(url + "/metrics").status_code == 401  # counts need the key (no --public-metrics)
        assert httpx.get(url + "/v1/web-config").json()["defaults"]["top_k"] == 7  # --top-k: the server default
        for key in ("sk-flag", "sk-env"):  # keys from the flag and from the environment
            c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
            r = c.chat.completions.create(model="mini", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
            assert r.usage.completion_tokens <= 4
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert "<title>" in httpx.get(url + "/").text
        assert server.stop() == 0, server.output()
