"""`ChatService`: the one object the routes reach the engine through.

It holds the backend (a ChatModel), the accepted API keys, the guards and their counters, and the
admission count; it turns a request into GenerationParams and a prompt into engine events.
Routes (infer/routes.py) stay thin; streaming (infer/streaming.py) formats what this yields.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import AsyncIterator

from bloomchat.errors import BloomchatError
from bloomchat.infer.api_errors import ApiError
from bloomchat.infer.api_schemas import SamplingFields
from bloomchat.infer.engine import Event
from bloomchat.infer.guards import GuardConfig, GuardSession, GuardStats
from bloomchat.infer.params import MAX_STOP_STRINGS, GenerationParams

#: Requests waiting or generating beyond which new ones get 429: 16 batches of the default 16
#: (16 * 16 = 256) keep a burst queued without letting a flood grow memory without bound.
MAX_QUEUE = 256
#: Seconds a client told 429 should wait (one short reply's worth of decoding).
RETRY_AFTER_S = 1


class Ticket:
    """One admitted request's place in the queue, given back exactly once (also if never used)."""

    def __init__(self, service: "ChatService", n: int):
        self.service, self.n, self.released = service, n, False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.service.admitted -= self.n

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # a stream whose body never started (client gone before it) still frees its place
        self.release()


class ChatService:
    def __init__(self, backend, *, names: list[str], api_keys: set[str], guards: GuardConfig | None,
                 max_queue: int = MAX_QUEUE, public_metrics: bool = False, defaults: GenerationParams | None = None):
        self.backend = backend
        self.defaults = (defaults or GenerationParams()).validate(where="server defaults")  # for fields a request omits
        self.names = names
        self.api_keys = [k.encode("utf-8") for k in api_keys]
        self.guards = guards
        self.max_queue = max_queue
        self.public_metrics = public_metrics
        self.stats = GuardStats()
        self.started = time.time()
        self.requests = 0
        self.admitted = 0  # requests (prompts) accepted and not yet finished, streams included

    @property
    def engine(self):
        return self.backend.engine

    # ---------------------------------------------------------------- checks
    def key_ok(self, authorization: str | None) -> bool:
        """Constant-time check of 'Bearer KEY' (header text is latin-1 as sent: compared as bytes)."""
        if not self.api_keys:
            return True
        raw = (authorization or "").encode("latin-1", "replace")
        scheme, _, key = raw.partition(b" ")
        key = key.strip()
        ok = False
        for k in self.api_keys:  # every key compared: the time does not tell which one matched
            ok |= secrets.compare_digest(key, k)
        return scheme.lower() == b"bearer" and ok

    def may_see_counts(self, authorization: str | None) -> bool:
        return self.public_metrics or self.key_ok(authorization)

    def check_model(self, name: str) -> None:
        if name not in self.names:
            raise ApiError(404, f"the model {name!r} does not exist; this server has {', '.join(self.names)}",
                           param="model", code="model_not_found")

    def admit(self, n: int = 1) -> Ticket:
        """Count a request (n prompts) in at once, before any streaming starts; 429 when full."""
        if self.admitted + n > self.max_queue:
            raise ApiError(429, f"server busy: {self.admitted} requests in flight (limit {self.max_queue}); "
                                f"retry shortly", type_="rate_limit_error", code="server_busy",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        self.admitted += n
        self.requests += 1
        return Ticket(self, n)

    def params_for(self, req: SamplingFields, max_tokens: int | None, n_prompt: int,
                   max_tokens_field: str = "max_tokens") -> GenerationParams:
        """The request's sampling settings over the server's defaults; `max_tokens_field` is the name the
        client used for the completion length (named in the error when it does not fit)."""
        ctx = self.backend.context
        if max_tokens is not None and n_prompt + max_tokens > ctx:
            raise ApiError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                                f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the "
                                f"completion). Please reduce the prompt or {max_tokens_field}.",
                           param=max_tokens_field, code="context_length_exceeded")
        if n_prompt >= ctx:
            raise ApiError(400, f"This model's maximum context length is {ctx} tokens; the prompt alone has "
                                f"{n_prompt}. Please shorten it.", param="messages", code="context_length_exceeded")
        stops = req.stop_list()
        if stops is None:
            raise ApiError(400, f"stop: at most {MAX_STOP_STRINGS} non-empty strings", param="stop")
        d = self.defaults
        pick = lambda v, default: default if v is None else v  # noqa: E731
        p = GenerationParams(
            temperature=pick(req.temperature, d.temperature), top_p=pick(req.top_p, d.top_p),
            top_k=pick(req.top_k, d.top_k),
            repetition_penalty=pick(req.repetition_penalty, d.repetition_penalty),
            max_new_tokens=max_tokens if max_tokens is not None else min(d.max_new_tokens, ctx - n_prompt),
            seed=req.seed, stop=stops, ignore_eos=req.ignore_eos)
        try:
            return p.validate()
        except BloomchatError as e:
            raise ApiError(400, str(e)) from None

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        for i, m in enumerate(messages):  # an empty user turn gives the model nothing to answer
            if m["role"] == "user" and not m["content"].strip():
                raise ApiError(400, f"messages[{i}].content: a user message must not be empty",
                               param=f"messages.{i}.content")
        try:
            return self.backend.prompt_ids(messages)
        except BloomchatError as e:
            raise ApiError(400, str(e), param="messages") from None

    def count_tokens(self, text: str) -> int:
        """Tokens of a reply text in the served model's tokenizer (as `usage` counts a completion)."""
        return len(self.backend.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ---------------------------------------------------------------- generation
    async def events(self, ids: list[int], params: GenerationParams) -> AsyncIterator[Event]:
        """Engine events for one prompt as an async iterator; leaving it cancels generation."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Event] = asyncio.Queue()
        handle = self.engine.submit(ids, params, lambda ev: loop.call_soon_threadsafe(q.put_nowait, ev))
        try:
            while True:
                ev = await q.get()
                yield ev
                if ev.done:
                    return
        finally:
            handle.cancel()

    async def guarded(self, messages: list[dict], ids: list[int], params: GenerationParams) -> AsyncIterator[Event]:
        """Like `events`, under the guards (language resampling, loop cut, moderation)."""
        if self.guards is None:
            async for ev in self.events(ids, params):
                yield ev
            return
        session = GuardSession(self.guards, self.stats, messages)
        refusal = session.check_input()
        if refusal is not None:
            yield Event(text=refusal)
            # nothing was generated, but the refusal is the completion the client gets: usage counts it
            yield Event(done=True, finish_reason="content_filter", prompt_tokens=len(ids),
                        completion_tokens=self.count_tokens(refusal))
            return
        while True:
            next_step = None
            gen = self.events(ids, params)
            try:
                async for ev in gen:
                    out, next_step = session.on_event(ev, prompt_tokens=len(ids))
                    for item in out:
                        yield item
                    if next_step is not None:
                        break
            finally:
                await gen.aclose()
            if next_step != "retry":
                return
            params = session.retry_params(params)

    def health(self, full: bool) -> dict:
        if not full:  # what a load balancer needs, open to anyone
            return {"status": "ok", "model": self.names[0]}
        eng = self.engine
        return {"status": "ok", "model": self.names[0], "context": self.backend.context,
                "uptime_s": round(time.time() - self.started, 1), "requests": self.requests,
                "in_flight": self.admitted, "max_queue": self.max_queue,
                "active_sequences": eng.active, "max_batch_size": eng.max_batch_size,
                "largest_batch": eng.max_rows_seen, "decode_steps": eng.steps,
                "guards": {"enabled": _guard_names(self.guards), "counts": self.stats.snapshot()}}

    def metrics_text(self) -> str:
        lines = [f"bloomchat_requests_total {self.requests}",
                 f"bloomchat_requests_in_flight {self.admitted}",
                 f"bloomchat_active_sequences {self.engine.active}",
                 f"bloomchat_decode_steps_total {self.engine.steps}"]
        for k, v in self.stats.snapshot().items():
            lines.append(f'bloomchat_guard_total{{event="{k}"}} {v}')
        return "\n".join(lines) + "\n"


def _guard_names(g: GuardConfig | None) -> list[str]:
    if g is None:
        return []
    return [n for n, on in (("language", g.language), ("repetition", g.repetition),
                            ("moderation", g.moderator is not None)) if on]
