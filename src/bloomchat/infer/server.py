"""OpenAI-compatible HTTP server over the continuous-batching engine, with the web chat at `/`.

    bloomchat serve out/stage2 --port 8000 --api-key sk-local
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Authorization: Bearer sk-local' \\
         -H 'Content-Type: application/json' \\
         -d '{"model": "stage2", "messages": [{"role": "user", "content": "你好"}], "stream": true}'

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with `stream: true` as
server-sent events), GET /v1/models, /health, /metrics (Prometheus text), /openapi.json, and the
web page at /. Every error is an OpenAI-style `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Literal, Union

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from bloomchat.errors import BloomchatError
from bloomchat.infer.engine import Event
from bloomchat.infer.guards import GuardConfig, GuardSession, GuardStats
from bloomchat.infer.params import MAX_REPETITION_PENALTY, MAX_STOP_STRINGS, GenerationParams

WEB_DIR = Path(__file__).parent / "web"
#: Largest request body accepted: a 2048-token context is ~10 KB of text, so 1 MiB
#: (1024 * 1024 bytes) leaves room for long contexts of big models while refusing floods.
MAX_BODY_BYTES = 1024 * 1024
#: Most messages in one conversation (a 2048-token context cannot hold more anyway).
MAX_MESSAGES = 1024
#: Most prompts in one /v1/completions call.
MAX_PROMPTS = 16
#: Requests waiting or generating beyond which new ones get 429: 16 batches of the default 16
#: (16 * 16 = 256) keep a burst queued without letting a flood grow memory without bound.
MAX_QUEUE = 256
API_KEYS_ENV = "BLOOMCHAT_API_KEYS"  # comma-separated


# --------------------------------------------------------------------------- request schemas
class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, logit_bias...)


class TextPart(_Req):
    type: Literal["text"]
    text: str = Field(max_length=MAX_BODY_BYTES)


class ChatMessage(_Req):
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class _SamplingFields(_Req):
    model: str = Field(min_length=1, max_length=256)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=1 << 20)
    repetition_penalty: float | None = Field(None, gt=0, le=MAX_REPETITION_PENALTY)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: Union[str, list[str], None] = None
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def stop_list(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
            raise _error(400, f"stop: at most {MAX_STOP_STRINGS} non-empty strings", param="stop")
        return tuple(stops)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, le=1 << 20)


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str]]
    echo: bool = False


# --------------------------------------------------------------------------- errors
class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def _error(status: int, message: str, **kw) -> ApiError:
    return ApiError(status, message, **kw)


def _error_body(message: str, type_: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class BodyLimit:
    """ASGI middleware: a body over the limit is a 413 before anything reads it into memory."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = JSONResponse(_error_body(f"request body is larger than {self.limit} bytes",
                                           code="request_too_large"), status_code=413)
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_big(scope, receive, send)
        seen, answered = 0, False

        async def limited_receive():  # a chunked body: count as it arrives, answer 413 once over
            nonlocal seen, answered
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit and not answered:
                    answered = True
                    await too_big(scope, receive, send)
                    return {"type": "http.disconnect"}
            return msg

        async def guarded_send(msg):  # after our 413 the app's own answer is dropped
            if not answered:
                await send(msg)

        await self.app(scope, limited_receive, guarded_send)


# --------------------------------------------------------------------------- the app
class ServerState:
    def __init__(self, backend, *, names: list[str], api_keys: set[str], guards: GuardConfig | None,
                 max_queue: int = MAX_QUEUE):
        self.backend = backend
        self.max_queue = max_queue
        self.names = names
        self.api_keys = api_keys
        self.guards = guards
        self.stats = GuardStats()
        self.started = time.time()
        self.requests = 0
        self.in_flight = 0


def api_keys_from(flag_keys: list[str] | None) -> set[str]:
    keys = set(k for k in (flag_keys or []) if k)
    env = os.environ.get(API_KEYS_ENV, "")
    keys |= {k.strip() for k in env.split(",") if k.strip()}
    return keys


def create_app(backend, *, api_keys: set[str] | None = None, guards: GuardConfig | None = None,
               model_names: list[str] | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               max_queue: int = MAX_QUEUE) -> FastAPI:
    """The FastAPI app around a ChatModel (`guards=None` turns all guards off)."""
    state = ServerState(backend, names=model_names or [backend.name], api_keys=set(api_keys or ()),
                        guards=guards, max_queue=max_queue)
    app = FastAPI(title="bloomchat", version="1", summary="OpenAI-compatible chat server for BLOOMChat models",
                  docs_url="/docs", redoc_url=None)
    app.state.bloomchat = state
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(_error_body(e.message, e.type, e.param, e.code), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            param = None  # its loc is the character offset, not a field
            msg = f"request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
        else:
            msg = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(_error_body(msg, param=param), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        return JSONResponse(_error_body(str(e.detail), type_="invalid_request_error"), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):  # a bug: still an error object, not a dead server
        return JSONResponse(_error_body(f"internal error: {type(e).__name__}", type_="server_error"),
                            status_code=500)

    async def auth(request: Request):
        if not state.api_keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not any(secrets.compare_digest(key.strip(), k) for k in state.api_keys):
            raise _error(401, "missing or invalid API key (send 'Authorization: Bearer KEY')",
                         type_="authentication_error", code="invalid_api_key")

    def check_capacity(n: int = 1):
        if state.backend.engine.active + n > state.max_queue:
            raise _error(429, f"server busy: {state.backend.engine.active} requests in flight (limit "
                              f"{state.max_queue}); retry shortly", type_="rate_limit_error", code="server_busy")

    def check_model(name: str):
        if name not in state.names:
            raise _error(404, f"the model {name!r} does not exist; this server has {', '.join(state.names)}",
                         param="model", code="model_not_found")

    def params_for(req: _SamplingFields, max_tokens: int | None, n_prompt: int) -> GenerationParams:
        ctx = state.backend.context
        if max_tokens is not None and n_prompt + max_tokens > ctx:
            raise _error(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                              f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the "
                              f"completion). Please reduce the prompt or max_tokens.",
                         param="max_tokens", code="context_length_exceeded")
        if n_prompt >= ctx:
            raise _error(400, f"This model's maximum context length is {ctx} tokens; the prompt alone has "
                              f"{n_prompt}. Please shorten it.", param="messages", code="context_length_exceeded")
        d = GenerationParams()
        p = GenerationParams(
            temperature=d.temperature if req.temperature is None else req.temperature,
            top_p=d.top_p if req.top_p is None else req.top_p,
            repetition_penalty=d.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
            max_new_tokens=max_tokens if max_tokens is not None else min(d.max_new_tokens, ctx - n_prompt),
            seed=req.seed, stop=req.stop_list())
        try:
            return p.validate()
        except BloomchatError as e:
            raise _error(400, str(e)) from None

    # ------------------------------------------------------------------ generation plumbing
    async def events(ids: list[int], params: GenerationParams, stop_texts=None):
        """Engine events for one prompt as an async iterator; leaving it cancels generation."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Event] = asyncio.Queue()
        handle = state.backend.engine.submit(ids, params, lambda ev: loop.call_soon_threadsafe(q.put_nowait, ev),
                                             stop_texts=stop_texts)
        try:
            while True:
                ev = await q.get()
                yield ev
                if ev.done:
                    return
        finally:
            handle.cancel()

    async def guarded(messages: list[dict], ids: list[int], params: GenerationParams):
        """Like `events`, under the guards (language resampling, loop cut, moderation)."""
        if state.guards is None:
            async for ev in events(ids, params):
                yield ev
            return
        session = GuardSession(state.guards, state.stats, messages)
        refusal = session.check_input()
        if refusal is not None:
            yield Event(text=refusal)
            yield Event(done=True, finish_reason="content_filter", prompt_tokens=len(ids))
            return
        while True:
            retry = False
            gen = events(ids, params)
            try:
                async for ev in gen:
                    out, next_step = session.on_event(ev, prompt_tokens=len(ids))
                    for item in out:
                        yield item
                    if next_step == "done":
                        return
                    if next_step == "retry":
                        retry = True
                        break
            finally:
                await gen.aclose()
            if not retry:
                return
            params = session.retry_params(params)

    async def until_done(request: Request, agen) -> tuple[str, Event]:
        """Collect a whole reply, cancelling generation if the client disconnects meanwhile."""
        async def collect():
            parts, last = [], Event(done=True)
            async for ev in agen:
                if ev.text:
                    parts.append(ev.text)
                if ev.done:
                    last = ev
            return (last.final_text if last.final_text is not None else "".join(parts)), last

        async def disconnected():
            while not await request.is_disconnected():
                await asyncio.sleep(0.25)

        work, watch = asyncio.ensure_future(collect()), asyncio.ensure_future(disconnected())
        try:
            done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                return work.result()
            raise _error(499, "client closed the request")
        finally:
            watch.cancel()
            if not work.done():
                work.cancel()
            await asyncio.gather(work, watch, return_exceptions=True)  # let them finish unwinding
            await agen.aclose()  # cancels generation if it is still running

    def _check_failed(ev: Event):
        if ev.finish_reason == "error":
            raise _error(500, f"generation failed: {ev.error}", type_="server_error")

    def usage(ev: Event, n_prompt: int) -> dict:
        return {"prompt_tokens": n_prompt, "completion_tokens": ev.completion_tokens,
                "total_tokens": n_prompt + ev.completion_tokens}

    def sse(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    # ------------------------------------------------------------------ routes
    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        check_model(req.model)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        for i, m in enumerate(messages):  # an empty user turn gives the model nothing to answer
            if m["role"] == "user" and not m["content"].strip():
                raise _error(400, f"messages[{i}].content: a user message must not be empty",
                             param=f"messages.{i}.content")
        try:
            ids = state.backend.prompt_ids(messages)
        except BloomchatError as e:
            raise _error(400, str(e), param="messages") from None
        params = params_for(req, req.max_completion_tokens or req.max_tokens, len(ids))
        check_capacity()
        state.requests += 1
        rid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        base = {"id": rid, "created": created, "model": req.model}
        if not req.stream:
            text, last = await until_done(request, guarded(messages, ids, params))
            _check_failed(last)
            return {**base, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": None, "finish_reason": last.finish_reason}],
                    "usage": usage(last, len(ids))}
        include_usage = bool((req.stream_options or {}).get("include_usage"))

        async def body():
            chunk = {**base, "object": "chat.completion.chunk"}
            yield sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "logprobs": None, "finish_reason": None}]})
            gen = guarded(messages, ids, params)
            try:
                async for ev in gen:
                    if ev.text:
                        yield sse({**chunk, "choices": [{"index": 0, "delta": {"content": ev.text},
                                                          "logprobs": None, "finish_reason": None}]})
                    if ev.done:
                        if ev.finish_reason == "error":
                            yield sse(_error_body(f"generation failed: {ev.error}", type_="server_error"))
                            break
                        yield sse({**chunk, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                                          "finish_reason": ev.finish_reason}]})
                        if include_usage:
                            yield sse({**chunk, "choices": [], "usage": usage(ev, len(ids))})
                yield "data: [DONE]\n\n"
            finally:
                await gen.aclose()  # client gone: cancels generation

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts or len(prompts) > MAX_PROMPTS:
            raise _error(400, f"prompt: give a string or a list of 1 to {MAX_PROMPTS} strings", param="prompt")
        if req.echo:
            raise _error(400, "echo is not supported", param="echo")
        tok = state.backend.tokenizer
        all_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if any(not ids for ids in all_ids):
            raise _error(400, "prompt must not be empty", param="prompt")
        params = [params_for(req, req.max_tokens, len(ids)) for ids in all_ids]
        check_capacity(len(all_ids))
        state.requests += 1
        rid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        base = {"id": rid, "created": created, "model": req.model, "object": "text_completion"}
        n_prompt = sum(len(i) for i in all_ids)
        if not req.stream:
            results = await asyncio.gather(*[until_done(request, events(ids, p)) for ids, p in zip(all_ids, params)])
            for _, last in results:
                _check_failed(last)
            n_out = sum(last.completion_tokens for _, last in results)
            return {**base, "choices": [{"index": i, "text": text, "logprobs": None,
                                         "finish_reason": last.finish_reason}
                                        for i, (text, last) in enumerate(results)],
                    "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out,
                              "total_tokens": n_prompt + n_out}}

        async def body():
            merged: asyncio.Queue = asyncio.Queue()
            gens = [events(ids, p) for ids, p in zip(all_ids, params)]

            async def pump(i, gen):
                async for ev in gen:
                    await merged.put((i, ev))

            tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
            try:
                remaining = len(gens)
                while remaining:
                    i, ev = await merged.get()
                    if ev.text:
                        yield sse({**base, "choices": [{"index": i, "text": ev.text, "logprobs": None,
                                                         "finish_reason": None}]})
                    if ev.done:
                        remaining -= 1
                        yield sse({**base, "choices": [{"index": i, "text": "", "logprobs": None,
                                                         "finish_reason": ev.finish_reason}]})
                yield "data: [DONE]\n\n"
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for g in gens:
                    await g.aclose()

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": int(state.started),
                                            "owned_by": "bloomchat"} for n in state.names]}

    @app.get("/health")
    async def health():
        eng = state.backend.engine
        return {"status": "ok", "model": state.names[0], "context": state.backend.context,
                "uptime_s": round(time.time() - state.started, 1), "requests": state.requests,
                "active_sequences": eng.active, "max_batch_size": eng.max_batch_size,
                "largest_batch": eng.max_rows_seen, "decode_steps": eng.steps,
                "guards": {"enabled": _guard_names(state.guards), "counts": state.stats.snapshot()}}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        lines = [f"bloomchat_requests_total {state.requests}",
                 f"bloomchat_active_sequences {state.backend.engine.active}",
                 f"bloomchat_decode_steps_total {state.backend.engine.steps}"]
        for k, v in state.stats.snapshot().items():
            lines.append(f'bloomchat_guard_total{{event="{k}"}} {v}')
        return "\n".join(lines) + "\n"

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/web-config", include_in_schema=False)
    async def web_config():
        d = GenerationParams()
        return {"model": state.names[0], "auth": bool(state.api_keys), "context": state.backend.context,
                "defaults": {"temperature": d.temperature, "top_p": d.top_p,
                             "repetition_penalty": d.repetition_penalty, "max_tokens": d.max_new_tokens}}

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def _guard_names(g: GuardConfig | None) -> list[str]:
    if g is None:
        return []
    return [n for n, on in (("language", g.language), ("repetition", g.repetition),
                            ("moderation", g.moderator is not None)) if on]


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


class BackgroundServer:
    """uvicorn on 127.0.0.1 and a free port (port 0) in a thread: tests, benches, notebooks.

        with BackgroundServer(app) as srv:
            openai.OpenAI(base_url=srv.url + "/v1", api_key="x")
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import threading

        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=self.server.run, name="bloomchat-uvicorn", daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
