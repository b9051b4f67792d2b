"""From engine events to HTTP: a whole reply (cancelled if the client leaves) or server-sent events.

Each stream holds its admission `Ticket` and gives it back when it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

from fastapi import Request

from bloomchat.infer.api_errors import ApiError, error_body
from bloomchat.infer.engine import Event
from bloomchat.infer.service import Ticket

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def usage(n_prompt: int, n_completion: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


def check_failed(ev: Event) -> None:
    if ev.finish_reason == "error":
        raise ApiError(500, f"generation failed: {ev.error}", type_="server_error")


async def _collect(agen: AsyncIterator[Event]) -> tuple[str, Event]:
    parts, last = [], Event(done=True)
    async for ev in agen:
        if ev.text:
            parts.append(ev.text)
        if ev.done:
            last = ev
    return (last.final_text if last.final_text is not None else "".join(parts)), last


async def _disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


async def until_done(request: Request, agen: AsyncIterator[Event]) -> tuple[str, Event]:
    """Collect a whole reply, cancelling generation if the client disconnects meanwhile."""
    work, watch = asyncio.ensure_future(_collect(agen)), asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        raise ApiError(499, "client closed the request")
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
        await asyncio.gather(work, watch, return_exceptions=True)  # let them finish unwinding
        await agen.aclose()  # cancels generation if it is still running


async def chat_chunks(events: AsyncIterator[Event], base: dict, n_prompt: int, include_usage: bool,
                      ticket: Ticket) -> AsyncIterator[str]:
    """The SSE body of a streamed chat completion."""
    def choice(delta: dict, finish=None) -> str:
        return sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    try:
        yield choice({"role": "assistant", "content": ""})
        async for ev in events:
            if ev.text:
                yield choice({"content": ev.text})
            if ev.done:
                if ev.finish_reason == "error":
                    yield sse(error_body(f"generation failed: {ev.error}", type_="server_error"))
                    break
                yield choice({}, ev.finish_reason)
                if include_usage:
                    yield sse({**base, "choices": [], "usage": usage(n_prompt, ev.completion_tokens)})
        yield "data: [DONE]\n\n"
    finally:
        await events.aclose()  # client gone: cancels generation
        ticket.release()


async def completion_chunks(gens: list[AsyncIterator[Event]], base: dict, ticket: Ticket) -> AsyncIterator[str]:
    """The SSE body of streamed /v1/completions: the prompts' events merged as they come."""
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(i, gen):
        async for ev in gen:
            await merged.put((i, ev))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        remaining = len(gens)
        while remaining:
            i, ev = await merged.get()
            if ev.text:
                yield sse({**base, "choices": [{"index": i, "text": ev.text, "logprobs": None, "finish_reason": None}]})
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
        ticket.release()
