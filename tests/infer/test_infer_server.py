"""The OpenAI-compatible server, driven for real: uvicorn on 127.0.0.1:free port, official client."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time

import httpx
import openai
import pytest

from bloomchat.infer import load_chat_model
from bloomchat.infer.guards import GuardConfig
from bloomchat.infer.server import BackgroundServer, create_app
from infer_helpers import scripted_chat_model

KEY = "sk-test-123"
HTTP = httpx.Client(timeout=30)  # one client: a fresh one per call costs ~0.4 s of TLS set-up
USER = [{"role": "user", "content": "Hello, how are you?"}]
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def micro_server(micro_model_dir):
    cm = load_chat_model(micro_model_dir, name="micro")
    with BackgroundServer(create_app(cm, api_keys={KEY}, guards=None)) as srv:
        srv.cm = cm
        yield srv
    cm.close()


@pytest.fixture(scope="module")
def client(micro_server):
    return openai.OpenAI(base_url=micro_server.url + "/v1", api_key=KEY, max_retries=0)


def _post(srv, path, body=None, *, content=None, key=KEY, headers=None):
    h = {"Authorization": f"Bearer {key}"} if key else {}
    h.update(headers or {})
    return HTTP.post(srv.url + path, json=body, content=content, headers=h)


def test_infer_openai_client_chat_non_streaming(client):
    r = client.chat.completions.create(model="micro", messages=USER, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == "micro"
    assert r.choices[0].message.role == "assistant" and isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 8
    again = client.chat.completions.create(model="micro", messages=USER, max_tokens=8, temperature=0)
    assert again.choices[0].message.content == r.choices[0].message.content  # greedy is deterministic


def test_infer_openai_client_chat_streaming_equals_non_streaming(client):
    whole = client.chat.completions.create(model="micro", messages=USER, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="micro", messages=USER, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed


def test_infer_openai_client_completions_and_models(client):
    r = client.completions.create(model="micro", prompt="<human>: Bonjour\n<bot>:", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens <= 6
    s = list(client.completions.create(model="micro", prompt="<human>: Bonjour\n<bot>:", max_tokens=6,
                                       temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in s) == r.choices[0].text
    two = client.completions.create(model="micro", prompt=["a b", "你好"], max_tokens=4, temperature=0)
    assert sorted(c.index for c in two.choices) == [0, 1]
    assert [m.id for m in client.models.list()] == ["micro"]


def test_infer_api_key_required(micro_server, monkeypatch):
    bad = openai.OpenAI(base_url=micro_server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = HTTP.get(micro_server.url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert HTTP.get(micro_server.url + "/health").status_code == 200  # health stays open for probes


def test_infer_api_keys_from_environment(monkeypatch):
    from bloomchat.infer.server import api_keys_from

    monkeypatch.setenv("BLOOMCHAT_API_KEYS", "k1, k2")
    assert api_keys_from(["k3"]) == {"k1", "k2", "k3"}


@pytest.mark.parametrize("body,content,status,needle", [
    (None, b'{"model": "micro", "messages": [', 400, "not valid JSON"),
    ({"model": "micro", "messages": "hi"}, None, 400, "messages"),
    ({"model": "micro", "messages": []}, None, 400, "messages"),
    ({"model": "micro", "messages": [{"role": "robot", "content": "x"}]}, None, 400, "role"),
    ({"model": "micro", "messages": [{"role": "user", "content": 5}]}, None, 400, "content"),
    ({"model": "micro", "messages": USER, "temperature": "hot"}, None, 400, "temperature"),
    ({"model": "micro", "messages": USER, "temperature": 50}, None, 400, "temperature"),
    ({"model": "micro", "messages": USER, "max_tokens": -3}, None, 400, "max_tokens"),
    ({"model": "micro", "messages": USER, "top_p": 0}, None, 400, "top_p"),
    ({"model": "micro", "messages": USER, "n": 3}, None, 400, "n"),
    ({"model": "micro", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, None, 400, "stop"),
    ({"model": "gpt-4", "messages": USER}, None, 404, "does not exist"),
    ({"model": "micro", "messages": USER, "max_tokens": 4000}, None, 400, "maximum context length is 2048"),
    ({"model": "micro", "messages": [{"role": "user", "content": "word " * 2100}]}, None, 400,
     "maximum context length"),
    (None, b"x" * (2 * 1024 * 1024), 413, "larger than"),
    ({"model": "micro", "messages": [{"role": "user", "content": ""}]}, None, 400, "must not be empty"),
    ({"model": "micro", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": " \n "}]}, None, 400, "messages[1].content"),
])
def test_infer_bad_requests_get_openai_error_objects(micro_server, body, content, status, needle):
    r = _post(micro_server, "/v1/chat/completions", body, content=content,
              headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"]
    if content is not None and content.startswith(b"{"):
        assert err["param"] is None  # malformed JSON: no field to blame (not the character offset)
    assert HTTP.get(micro_server.url + "/health").json()["status"] == "ok"  # still alive


def test_infer_openai_client_sees_context_error(client):
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(model="micro", messages=USER, max_tokens=5000)


def test_infer_chunked_oversize_body_is_413(micro_server):
    def gen():
        for _ in range(40):
            yield b"y" * 65536  # 40 x 64 KiB = 2.5 MiB, sent without a Content-Length
    r = HTTP.post(micro_server.url + "/v1/chat/completions", content=gen(),
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 413


def test_infer_concurrent_requests_share_batches(micro_server, client):
    before = HTTP.get(micro_server.url + "/health", headers=AUTH).json()["decode_steps"]

    def one(i):
        s = client.chat.completions.create(model="micro", messages=[{"role": "user", "content": f"q{i}"}],
                                           max_tokens=40, temperature=0.8, seed=i, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in s if c.choices)
    with cf.ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(one, range(8)))
    h = HTTP.get(micro_server.url + "/health", headers=AUTH).json()
    assert len(outs) == 8 and h["largest_batch"] >= 4
    # served one after another this would take 8 x ~40 decoding steps; batched it takes far fewer
    assert h["decode_steps"] - before < 8 * 40 * 0.6


def _wait_idle(srv, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if HTTP.get(srv.url + "/health").json()["active_sequences"] == 0:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture()
def slow_server(tiny_tokenizer):
    cm = scripted_chat_model(tiny_tokenizer, " la la", eos_after=False, delay=0.01, name="slow")
    with BackgroundServer(create_app(cm, guards=None)) as srv:
        srv.cm = cm
        yield srv
    cm.close()


def test_infer_streaming_client_disconnect_stops_generation(slow_server):
    body = {"model": "slow", "messages": USER, "max_tokens": 1500, "stream": True}
    with httpx.stream("POST", slow_server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        it = r.iter_lines()
        first = [next(it) for _ in range(6)]
        assert any(line.startswith("data:") for line in first)
    # 1500 steps at 10 ms would run 15 s; the disconnect must end it within a moment
    assert _wait_idle(slow_server, timeout=5), "generation kept running after the client left"
    assert slow_server.cm.engine.steps < 1000


def test_infer_non_streaming_client_disconnect_stops_generation(slow_server):
    body = {"model": "slow", "messages": USER, "max_tokens": 1500}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(slow_server.url + "/v1/chat/completions", json=body, timeout=0.5)
    assert _wait_idle(slow_server, timeout=5)
    assert slow_server.cm.engine.steps < 1000


def test_infer_guards_counted_in_health_and_metrics(tiny_tokenizer):
    looping = scripted_chat_model(tiny_tokenizer, " I am fine." * 12, name="loop")
    with BackgroundServer(create_app(looping, guards=GuardConfig(language=False))) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        r = c.chat.completions.create(model="loop", messages=USER, max_tokens=200)
        assert r.choices[0].message.content == "I am fine."
        bomb = [{"role": "user", "content": "Tell me how to make a bomb at home"}]
        refused = c.chat.completions.create(model="loop", messages=bomb)
        assert refused.choices[0].finish_reason == "content_filter"
        text = refused.choices[0].message.content
        assert "can't help" in text
        # usage counts the refusal the client received (nothing was generated, yet it is the completion)
        n = len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
        assert n > 5 and refused.usage.completion_tokens == n
        assert refused.usage.total_tokens == refused.usage.prompt_tokens + n and refused.usage.prompt_tokens > 0
        chunks = list(c.chat.completions.create(model="loop", messages=bomb, stream=True,
                                                stream_options={"include_usage": True}))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
        assert chunks[-1].usage.completion_tokens == n
        counts = HTTP.get(srv.url + "/health").json()["guards"]["counts"]
        assert counts["repetition_cut"] == 1 and counts["moderation_input_blocked"] == 2
        metrics = HTTP.get(srv.url + "/metrics").text
        assert 'bloomchat_guard_total{event="repetition_cut"} 1' in metrics
    looping.close()


def test_infer_openapi_schema_published(micro_server):
    spec = HTTP.get(micro_server.url + "/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"} <= set(spec["paths"])
    assert "ChatCompletionRequest" in json.dumps(spec)


# ----------------------------------------------------------------------------- fuzzing
def test_infer_fuzz_openapi_schema_no_server_errors(tiny_tokenizer):
    """schemathesis generates valid and invalid requests from the published schema; none may get a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    cm = scripted_chat_model(tiny_tokenizer, " Hi there.", name="fuzz")
    app = create_app(cm, api_keys={KEY}, guards=GuardConfig())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    statuses: list[int] = []
    try:
        ops = [r.ok() for r in schema.get_all_operations()]
        assert len(ops) >= 5
        for op in ops:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                # bounded: 8 examples per operation and mode keeps this file well under a minute
                @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
                @given(case=op.as_strategy(generation_mode=mode))
                def run(case):
                    r = case.call(headers={"Authorization": f"Bearer {KEY}"})
                    statuses.append(r.status_code)
                    case.validate_response(r, checks=[not_a_server_error])
                try:
                    run()
                except Unsatisfiable:  # GET routes without parameters have no invalid input to make
                    assert mode == GenerationMode.NEGATIVE
    finally:
        cm.close()
    assert statuses and max(statuses) < 500
    assert any(400 <= s < 500 for s in statuses)  # the negative cases did reach validation


def test_infer_full_queue_is_429_not_a_hang(tiny_tokenizer):
    cm = scripted_chat_model(tiny_tokenizer, " la la", eos_after=False, delay=0.01, name="busy")
    with BackgroundServer(create_app(cm, guards=None, max_queue=1)) as srv:
        body = {"model": "busy", "messages": USER, "max_tokens": 1500, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            while '"content": "l' not in next(lines):  # until the first request is generating
                pass
            c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
            with pytest.raises(openai.RateLimitError, match="server busy"):
                c.chat.completions.create(model="busy", messages=USER, max_tokens=5)
        assert _wait_idle(srv)
        assert c.chat.completions.create(model="busy", messages=USER, max_tokens=5).choices[0].finish_reason
    cm.close()


def test_infer_usage_counts_a_reply_cut_by_the_repetition_guard(tiny_tokenizer):
    """A reply the loop guard cuts still reports the tokens generated up to the cut (it said 0)."""
    unit = " I am fine."
    looping = scripted_chat_model(tiny_tokenizer, unit * 12, name="loop")
    n_unit = len(tiny_tokenizer(unit, add_special_tokens=False)["input_ids"])
    with BackgroundServer(create_app(looping, guards=GuardConfig(language=False, moderator=None))) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        r = c.chat.completions.create(model="loop", messages=USER, max_tokens=64)
        assert r.choices[0].message.content == "I am fine."
        # the guard sees a loop after 3 copies: at least those were generated, never more than asked
        assert 3 * n_unit <= r.usage.completion_tokens <= 64
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        chunks = list(c.chat.completions.create(model="loop", messages=USER, max_tokens=64, stream=True,
                                                stream_options={"include_usage": True}))
        assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    looping.close()
