"""The chat server's routes: each checks its request, asks the ChatService, and shapes the answer.

Authentication runs before any route, and before the body is read (infer/server.py:KeyCheck).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse

from bloomchat.infer import streaming
from bloomchat.infer.api_docs import ERRORS, GENERATION_ERRORS, SSE_200
from bloomchat.infer.api_errors import ApiError
from bloomchat.infer.api_schemas import MAX_PROMPTS, ChatCompletionRequest, CompletionRequest
from bloomchat.infer.service import ChatService

WEB_DIR = Path(__file__).parent / "web"
router = APIRouter()


def service_of(request: Request) -> ChatService:
    return request.app.state.service


@router.post("/v1/chat/completions", tags=["openai"], responses={**SSE_200, **GENERATION_ERRORS})
async def chat_completions(req: ChatCompletionRequest, request: Request):
    svc = service_of(request)
    svc.check_model(req.model)
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    ids = svc.chat_prompt(messages)
    field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    params = svc.params_for(req, req.max_completion_tokens or req.max_tokens, len(ids), field)
    ticket = svc.admit(1)
    base = {"id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": req.model}
    if req.stream:
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        body = streaming.chat_chunks(svc.guarded(messages, ids, params), {**base, "object": "chat.completion.chunk"},
                                     len(ids), include_usage, ticket)
        return StreamingResponse(body, media_type="text/event-stream", headers=streaming.SSE_HEADERS)
    with ticket:
        text, last = await streaming.until_done(request, svc.guarded(messages, ids, params))
    streaming.check_failed(last)
    return {**base, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": last.finish_reason}],
            "usage": streaming.usage(len(ids), last.completion_tokens)}


@router.post("/v1/completions", tags=["openai"], responses={**SSE_200, **GENERATION_ERRORS})
async def completions(req: CompletionRequest, request: Request):
    svc = service_of(request)
    svc.check_model(req.model)
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts or len(prompts) > MAX_PROMPTS:
        raise ApiError(400, f"prompt: give a string or a list of 1 to {MAX_PROMPTS} strings", param="prompt")
    if req.echo:
        raise ApiError(400, "echo is not supported", param="echo")
    tok = svc.backend.tokenizer
    all_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if any(not ids for ids in all_ids):
        raise ApiError(400, "prompt must not be empty", param="prompt")
    params = [svc.params_for(req, req.max_tokens, len(ids)) for ids in all_ids]
    ticket = svc.admit(len(all_ids))
    base = {"id": f"cmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": req.model,
            "object": "text_completion"}
    gens = [svc.events(ids, p) for ids, p in zip(all_ids, params)]
    if req.stream:
        return StreamingResponse(streaming.completion_chunks(gens, base, ticket), media_type="text/event-stream",
                                 headers=streaming.SSE_HEADERS)
    with ticket:
        results = await asyncio.gather(*[streaming.until_done(request, g) for g in gens])
    for _, last in results:
        streaming.check_failed(last)
    n_out = sum(last.completion_tokens for _, last in results)
    return {**base, "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": last.finish_reason}
                                for i, (text, last) in enumerate(results)],
            "usage": streaming.usage(sum(len(i) for i in all_ids), n_out)}


@router.get("/v1/models", tags=["openai"], responses={401: ERRORS[401]})
async def models(request: Request):
    svc = service_of(request)
    return {"object": "list", "data": [{"id": n, "object": "model", "created": int(svc.started),
                                        "owned_by": "bloomchat"} for n in svc.names]}


@router.get("/health", tags=["operations"])
async def health(request: Request):
    """Open to anyone (load balancers); the counts only with a key (or `--public-metrics`)."""
    svc = service_of(request)
    return svc.health(full=svc.may_see_counts(request.headers.get("authorization")))


@router.get("/metrics", response_class=PlainTextResponse, tags=["operations"], responses={401: ERRORS[401]})
async def metrics(request: Request):
    return service_of(request).metrics_text()


@router.get("/", include_in_schema=False)
async def index():
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/v1/web-config", include_in_schema=False)
async def web_config(request: Request):
    svc = service_of(request)
    d = svc.defaults
    return {"model": svc.names[0], "auth": bool(svc.api_keys), "context": svc.backend.context,
            "defaults": {"temperature": d.temperature, "top_p": d.top_p, "top_k": d.top_k,
                         "repetition_penalty": d.repetition_penalty, "max_tokens": d.max_new_tokens}}
