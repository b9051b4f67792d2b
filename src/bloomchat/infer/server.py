"""OpenAI-compatible HTTP server over the continuous-batching engine, with the web chat at `/`.

    bloomchat serve out/stage2 --port 8000 --api-key sk-local
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Authorization: Bearer sk-local' \\
         -H 'Content-Type: application/json' \\
         -d '{"model": "stage2", "messages": [{"role": "user", "content": "你好"}], "stream": true}'

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with `stream: true` as
server-sent events), GET /v1/models, /health, /metrics (Prometheus text), /openapi.json, and the
web page at /. Every error is an OpenAI-style `{"error": {"message", "type", "param", "code"}}`.

The request's path: BodyLimit (413) -> KeyCheck (401, before the body is read) -> routes.py (parse,
check, admit or 429) -> service.py (the engine, under the guards) -> streaming.py (JSON or SSE);
api_errors.py maps every failure to the error object, api_docs.py keeps /openapi.json true.
"""

from __future__ import annotations

import os
import time

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from bloomchat.asgi_limits import BodyLimit
from bloomchat.infer.api_docs import install_openapi
from bloomchat.infer.api_errors import error_body, install_error_handlers, too_large_body
from bloomchat.infer.api_schemas import MAX_BODY_BYTES
from bloomchat.infer.guards import GuardConfig
from bloomchat.infer.params import GenerationParams
from bloomchat.infer.routes import WEB_DIR, router
from bloomchat.infer.service import MAX_QUEUE, ChatService

__all__ = ["MAX_BODY_BYTES", "MAX_QUEUE", "BackgroundServer", "ChatService", "api_keys_from", "create_app", "run"]

API_KEYS_ENV = "BLOOMCHAT_API_KEYS"  # comma-separated
#: Paths that need the key (when keys are set): the API, and /metrics unless --public-metrics.
#: /health answers everyone (its counts only with the key); / and /v1/web-config feed the web page.
OPEN_PATHS = {"/", "/health", "/v1/web-config", "/openapi.json", "/docs", "/docs/oauth2-redirect"}


def api_keys_from(flag_keys: list[str] | None) -> set[str]:
    keys = set(k for k in (flag_keys or []) if k)
    env = os.environ.get(API_KEYS_ENV, "")
    keys |= {k.strip() for k in env.split(",") if k.strip()}
    return keys


def needs_key(service: ChatService, path: str) -> bool:
    if not service.api_keys or path in OPEN_PATHS or path.startswith("/static/"):
        return False
    return not (path == "/metrics" and service.public_metrics)


class KeyCheck:
    """ASGI middleware: the key is checked before a route runs and before its body is read, so an
    anonymous client cannot make the server read (or parse) anything."""

    def __init__(self, app, service: ChatService):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and needs_key(self.service, scope.get("path", "")):
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not self.service.key_ok(header):
                body = error_body("missing or invalid API key (send 'Authorization: Bearer KEY')",
                                  type_="authentication_error", code="invalid_api_key")
                return await JSONResponse(body, status_code=401,
                                          headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(backend, *, api_keys: set[str] | None = None, guards: GuardConfig | None = None,
               model_names: list[str] | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               max_queue: int = MAX_QUEUE, public_metrics: bool = False,
               defaults: GenerationParams | None = None) -> FastAPI:
    """The FastAPI app around a ChatModel (`guards=None` turns all guards off; `defaults`: the
    sampling a request gets for the fields it omits, BLOOMChat's unless given).

    The engine is reached through one object, `app.state.service` (a ChatService)."""
    service = ChatService(backend, names=model_names or [backend.name], api_keys=set(api_keys or ()),
                          guards=guards, max_queue=max_queue, public_metrics=public_metrics, defaults=defaults)
    app = FastAPI(title="bloomchat", version="1", summary="OpenAI-compatible chat server for BLOOMChat models",
                  docs_url="/docs", redoc_url=None)
    app.state.service = service
    app.state.bloomchat = service  # the name earlier code used
    install_error_handlers(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    # outermost first: the size limit, then the key, then the routes
    app.add_middleware(KeyCheck, service=service)
    app.add_middleware(BodyLimit, limit=max_body_bytes, body=too_large_body)
    install_openapi(app, needs_key=lambda path: needs_key(service, path))
    return app


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
