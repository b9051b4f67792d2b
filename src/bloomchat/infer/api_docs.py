"""/openapi.json that tells the truth: the statuses, content types and security the server really has.

FastAPI's generated schema documents 422 for validation (this server answers 400, as OpenAI does),
and knows nothing of the key check (a middleware), the 413 body limit, the 429 queue limit or the
event-stream answers. The route decorators name the error answers (`ERRORS`); `install_openapi`
drops the 422s and adds the bearer scheme where a key is needed, so schema-driven clients and
fuzzers (tests/infer/test_infer_fuzz.py) see the real API.
"""

from __future__ import annotations

from typing import Callable

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from bloomchat.infer.api_schemas import ErrorResponse


def _err(description: str, **extra) -> dict:
    return {"model": ErrorResponse, "description": description, **extra}


#: Error answers by status, for the route decorators.
ERRORS = {
    400: _err("invalid request: bad JSON, a field out of range, or the prompt beyond the context"),
    401: _err("missing or invalid API key"),
    404: _err("no such model"),
    413: _err("request body over the size limit"),
    429: _err("the queue is full; retry after the given seconds",
              headers={"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}),
    500: _err("generation failed (an engine error)"),
}
GENERATION_ERRORS = {k: ERRORS[k] for k in (400, 401, 404, 413, 429, 500)}
SSE_200 = {200: {"description": "a JSON object, or with `stream: true` server-sent events ending in `data: [DONE]`",
                 "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


def install_openapi(app: FastAPI, *, needs_key: Callable[[str], bool]) -> None:
    """Replace app.openapi with the truthful schema (computed once)."""
    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        for path, ops in schema.get("paths", {}).items():
            for op in ops.values():
                op.get("responses", {}).pop("422", None)
                for status, resp in op.get("responses", {}).items():
                    if status[0] in "45":  # errors are JSON even where the success is text (/metrics)
                        resp["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
                if needs_key(path):
                    op["security"] = [{"bearerAuth": []}]
                else:
                    op.get("responses", {}).pop("401", None)
        comps = schema.setdefault("components", {})
        for name in ("HTTPValidationError", "ValidationError"):
            comps.get("schemas", {}).pop(name, None)
        if any(needs_key(p) for p in schema.get("paths", {})):
            comps["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                       "description": "an API key given to `bloomchat serve --api-key`"}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
