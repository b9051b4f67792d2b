"""Never a 500: the chat server under schema-driven fuzzing, hostile strings and numbers, odd headers,
and a burst beyond --max-queue; the schema it serves must describe the API it serves."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bloomchat.infer.guards import GuardConfig
from bloomchat.infer.server import BackgroundServer, create_app
from infer_helpers import scripted_chat_model

KEY = "sk-fuzz"
AUTH = {"Authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": "Hello, how are you?"}]
FAST = settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_app(tiny_tokenizer):
    cm = scripted_chat_model(tiny_tokenizer, " Hi there.", name="fuzz")
    app = create_app(cm, api_keys={KEY}, guards=GuardConfig())
    yield app
    cm.close()


@pytest.fixture(scope="module")
def http(fuzz_app):
    with TestClient(fuzz_app, raise_server_exceptions=False) as c:
        yield c


def _chat(http, body, headers=AUTH):
    return http.post("/v1/chat/completions", content=json.dumps(body), headers={**headers, "Content-Type": "application/json"})


def _openai_error(r):
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


# ----------------------------------------------------------------------------- the served schema
@pytest.mark.slow
def test_infer_schemathesis_over_served_schema_no_5xx_and_conformant(fuzz_app):
    """schemathesis builds valid and invalid requests from /openapi.json (key supplied); every answer
    must be a non-5xx whose status, content type, headers and body the schema documents; and every
    keyed operation must refuse a request without the key."""
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import (content_type_conformance, ignored_auth, not_a_server_error,
                                     response_headers_conformance, response_schema_conformance,
                                     status_code_conformance)

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance, ignored_auth]
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    statuses: list[int] = []
    ops = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in ops} >= {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"}
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # bounded: 15 examples per operation and mode (~150 requests) keeps this under a minute
            @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                r = case.call(headers=AUTH)
                statuses.append(r.status_code)
                case.validate_response(r, checks=checks, headers=AUTH)
            try:
                run()
            except Unsatisfiable:  # GET routes without parameters have no invalid input to make
                assert mode == GenerationMode.NEGATIVE
    print(f"schemathesis: {len(statuses)} requests, {sum(s >= 500 for s in statuses)} 5xx, "
          f"statuses {sorted(set(statuses))}")
    assert statuses and max(statuses) < 500
    assert 200 in statuses  # positive cases reached generation (the schema lets a fuzzer through)
    assert any(400 <= s < 500 for s in statuses)


def test_infer_schema_tells_the_truth(http):
    spec = http.get("/openapi.json").json()
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert "422" not in json.dumps(spec["paths"])  # validation answers 400, as OpenAI's API does
    assert {"200", "400", "401", "404", "413", "429"} <= set(chat["responses"])
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert "Retry-After" in chat["responses"]["429"]["headers"]
    assert chat["security"] == [{"bearerAuth": []}]
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "an API key given to `bloomchat serve --api-key`"}
    assert "security" not in spec["paths"]["/health"]["get"]  # open for load balancers
    assert "top_k" in spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]


# ----------------------------------------------------------------------------- hostile input
_SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
_WITH_SURROGATE = st.tuples(st.text(max_size=8), _SURROGATE, st.text(max_size=8)).map("".join)


@FAST
@given(text=_WITH_SURROGATE, where=st.sampled_from(["content", "model", "stop", "part"]))
def test_infer_lone_surrogates_are_400_naming_the_field(http, text, where):
    msgs = [{"role": "user", "content": text if where == "content" else "hi"}]
    if where == "part":
        msgs = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    body = {"model": text if where == "model" else "fuzz", "messages": msgs, "max_tokens": 4}
    if where == "stop":
        body["stop"] = [text]
    r = _chat(http, body)  # json.dumps writes the surrogate as the escape "\ud8xx": valid JSON
    assert r.status_code == 400, r.text
    err = _openai_error(r)
    assert err["param"] and err["param"].split(".")[0] in ("messages", "model", "stop")
    assert "surrogate" in err["message"] or "unicode" in err["message"]


@FAST
@given(text=_WITH_SURROGATE)
def test_infer_lone_surrogate_in_completions_prompt_is_400(http, text):
    r = http.post("/v1/completions", content=json.dumps({"model": "fuzz", "prompt": [text], "max_tokens": 2}),
                  headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and _openai_error(r)["param"].startswith("prompt")


_HUGE = st.one_of(st.integers(-(2**80), 2**80), st.sampled_from([2**63, 2**64, -(2**63) - 1, 2**70, 0, -1]))


@FAST
@given(field=st.sampled_from(["max_tokens", "seed", "top_k", "n", "max_completion_tokens"]), value=_HUGE)
def test_infer_huge_integers_are_answered_not_crashed(http, field, value):
    r = _chat(http, {"model": "fuzz", "messages": USER, "max_tokens": 3, **{field: value}})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert field in _openai_error(r)["message"]


def test_infer_too_long_completion_names_the_field_the_client_sent(http):
    for field in ("max_tokens", "max_completion_tokens"):  # a case hypothesis found: 2036 fits the schema, not the context
        r = _chat(http, {"model": "fuzz", "messages": USER, field: 2036})
        assert r.status_code == 400 and _openai_error(r)["param"] == field and field in _openai_error(r)["message"]


@FAST
@given(header=st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40),
       prefix=st.sampled_from(["", "Bearer ", "bearer ", "Basic "]))
def test_infer_odd_authorization_headers_are_401(http, header, prefix):
    value = (prefix + header).encode("latin-1")  # non-ASCII bytes, as a client may send them
    r = http.get("/v1/models", headers={"Authorization": value})
    assert r.status_code == 401 and _openai_error(r)["code"] == "invalid_api_key"


def test_infer_non_ascii_key_header_with_the_real_key_after_it(http):
    r = http.get("/v1/models", headers={"Authorization": "Bearer é".encode("latin-1") + b" " + KEY.encode()})
    assert r.status_code == 401


@pytest.mark.parametrize("method,path,status", [("GET", "/nope", 404), ("GET", "/v1/nope", 404),
                                                 ("DELETE", "/v1/models", 405), ("GET", "/v1/chat/completions", 405)])
def test_infer_unknown_routes_and_methods_get_openai_errors(http, method, path, status):
    r = http.request(method, path, headers=AUTH)
    assert r.status_code == status and "detail" not in r.json()
    assert _openai_error(r)["code"] in ("not_found", "method_not_allowed")


@pytest.mark.parametrize("content,ctype", [(b"\xff\xfe{", "application/json"), (b"model=x", "application/x-www-form-urlencoded"),
                                           (b"", "application/json"), (b"[1, 2]", "application/json")])
def test_infer_unparseable_bodies_get_openai_errors(http, content, ctype):
    r = http.post("/v1/chat/completions", content=content, headers={**AUTH, "Content-Type": ctype})
    assert r.status_code == 400, r.text
    assert "detail" not in r.json() and _openai_error(r)["type"] == "invalid_request_error"


def test_infer_key_checked_before_the_body_is_read(fuzz_app):
    """An anonymous POST is refused without the server reading a byte of its body."""
    reads = []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    sent = []

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "headers": [(b"content-type", b"application/json")], "http_version": "1.1",
             "scheme": "http", "server": ("t", 80), "client": ("c", 1), "root_path": ""}
    asyncio.run(fuzz_app(scope, receive, send))
    assert sent[0]["status"] == 401 and reads == []


def test_infer_health_minimal_without_key_counts_with_it(fuzz_app, tiny_tokenizer):
    with TestClient(fuzz_app) as c:
        assert c.get("/health").json() == {"status": "ok", "model": "fuzz"}
        full = c.get("/health", headers=AUTH).json()
        assert "guards" in full and "decode_steps" in full
        assert c.get("/metrics").status_code == 401
        assert "bloomchat_requests_total" in c.get("/metrics", headers=AUTH).text
    cm = scripted_chat_model(tiny_tokenizer, " Hi.", name="pub")
    with TestClient(create_app(cm, api_keys={KEY}, public_metrics=True)) as c:
        assert c.get("/metrics").status_code == 200 and "guards" in c.get("/health").json()
        assert c.get("/v1/models").status_code == 401  # the API itself still needs the key
    cm.close()


# ----------------------------------------------------------------------------- --max-queue under a burst
def test_infer_burst_of_64_admits_at_most_max_queue(tiny_tokenizer):
    """64 simultaneous streams against --max-queue 8: at most 8 admitted (counted when accepted, not
    when their body starts), the others 429 with Retry-After; afterwards every place is free again."""
    cm = scripted_chat_model(tiny_tokenizer, " la la", eos_after=False, delay=0.01, name="burst")
    app = create_app(cm, guards=None, max_queue=8)
    body = {"model": "burst", "messages": USER, "max_tokens": 1500, "stream": True}

    async def burst(url):
        answered: list[tuple[int, str | None]] = []
        all_in = asyncio.Event()
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            async def one():
                async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    answered.append((r.status_code, r.headers.get("retry-after")))
                    if len(answered) == 64:
                        all_in.set()
                    await all_in.wait()  # hold admitted streams open until every request has its answer
            await asyncio.wait_for(asyncio.gather(*[one() for _ in range(64)]), timeout=120)
        return answered

    with BackgroundServer(app) as srv:
        answered = asyncio.run(burst(srv.url))
        ok = [s for s, _ in answered if s == 200]
        busy = [(s, ra) for s, ra in answered if s != 200]
        assert 1 <= len(ok) <= 8, sorted(s for s, _ in answered)
        assert busy and all(s == 429 and ra == "1" for s, ra in busy)
        svc = app.state.service
        deadline = asyncio.run(_wait(lambda: svc.admitted == 0 and cm.engine.active == 0))
        assert deadline, f"{svc.admitted} places still taken after the clients left"
        r = httpx.post(srv.url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3}, timeout=30)
        assert r.status_code == 200
    cm.close()


async def _wait(cond, timeout=10.0) -> bool:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return True
        await asyncio.sleep(0.05)
    return cond()
