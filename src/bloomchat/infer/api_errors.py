"""Every error the chat server sends is an OpenAI-style `{"error": {message, type, param, code}}`.

The handlers sit on Starlette's HTTPException (the base class: routing's 404 and 405 raise it,
not FastAPI's subclass), on request validation (400, as OpenAI answers, never FastAPI's 422, and
without echoing the rejected input) and on any other exception (a bug: still an error object).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """Raised anywhere in a request; becomes the error object with its status (and headers)."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


def error_body(message: str, type_: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def too_large_body(limit: int) -> dict:
    return error_body(f"request body is larger than {limit} bytes", code="request_too_large")


def validation_message(e: RequestValidationError) -> tuple[str, str | None]:
    """The first problem as one line and the field it concerns (never the rejected value)."""
    errs = e.errors()
    # a union (str or list) reports one error per branch: our own check's is the telling one
    first = next((x for x in errs if x.get("type") in ("value_error", "string_unicode")),
                 max(errs, key=lambda x: len(x.get("loc", ())), default={}))
    loc = [str(x) for x in first.get("loc", ()) if x != "body" and "[" not in str(x)]  # no union tags
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":  # its loc is the character offset, not a field
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
    return f"{param or 'body'}: {msg}", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        msg, param = validation_message(e)
        return JSONResponse(error_body(msg, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        msg = f"{request.method} {request.url.path}: {e.detail}"
        return JSONResponse(error_body(msg, code=code), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):  # a bug: still an error object, not a dead server
        return JSONResponse(error_body(f"internal error: {type(e).__name__}", type_="server_error"), status_code=500)
