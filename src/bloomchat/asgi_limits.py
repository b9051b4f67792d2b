"""ASGI pieces shared by the two web servers (`bloomchat serve`, `bloomchat arena serve`).

`BodyLimit` answers 413 before a body over the limit is read into memory; `utf8_text` is the check
every client string passes (a lone surrogate such as "\\ud800" is valid JSON but not Unicode text:
the tokenizer, SQLite and the JSON encoder all fail on it later, so it is refused at the door).
"""

from __future__ import annotations

from typing import Callable

from starlette.responses import JSONResponse


def utf8_text(value: str) -> str:
    """A pydantic AfterValidator: the string must encode as UTF-8 (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode text (lone surrogate at character {e.start})") from None
    return value


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is a 413 before anything reads it into memory.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as it
    arrives and refused once over (the app then sees a disconnect and its own answer is dropped).
    `body(limit)` makes the JSON of the 413 (each server has its own error shape)."""

    def __init__(self, app, limit: int, body: Callable[[int], dict] | None = None):
        self.app, self.limit = app, limit
        self.body = body or (lambda n: {"detail": f"request body is larger than {n} bytes"})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_big = JSONResponse(self.body(self.limit), status_code=413)
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_big(scope, receive, send)
        seen, answered = 0, False

        async def limited_receive():
            nonlocal seen, answered
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit and not answered:
                    answered = True
                    await too_big(scope, receive, send)
                    return {"type": "http.disconnect"}
            return msg

        async def guarded_send(msg):
            if not answered:
                await send(msg)

        await self.app(scope, limited_receive, guarded_send)
