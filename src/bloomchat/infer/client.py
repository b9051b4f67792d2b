"""Any OpenAI-compatible engine (vLLM, TGI, `bloomchat serve`, ...) behind ChatModel's API.

    from bloomchat.infer import load_chat_model
    cm = load_chat_model("bloomchat-176b", backend="openai", base_url="http://gpu-box:8000/v1")
    cm.reply([{"role": "user", "content": "你好"}])

BLOOMChat's repetition penalty and top_k are not OpenAI parameters; they are sent as `repetition_penalty`
and `top_k` in the request body (`sampling_extras`), which vLLM and `bloomchat serve` read (pass
send_repetition_penalty=False for other engines that reject unknown fields).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Sequence

from bloomchat.errors import BloomchatError
from bloomchat.infer.chat_model import check_messages
from bloomchat.infer.engine import Event
from bloomchat.infer.params import GenerationParams


def sampling_extras(params: GenerationParams, base_url: str | None) -> dict:
    """repetition_penalty and top_k, which are not OpenAI parameters: always sent to an open engine
    (vLLM and TGI default to 1.0 and no top_k, bloomchat serve to BLOOMChat's 1.2 and 50, so leaving
    them out would change the decoding); OpenAI's own API rejects unknown parameters, so there they
    are left out, and a penalty it cannot apply is refused."""
    if "api.openai.com" not in (base_url or ""):
        return {"repetition_penalty": params.repetition_penalty, "top_k": params.top_k}
    if params.repetition_penalty != 1.0:
        raise BloomchatError("OpenAI's API has no repetition penalty: pass --repetition-penalty 1.0", where=base_url)
    return {}


class OpenAIChatClient:
    """reply / stream / stream_events / reply_batch over the OpenAI chat completions API."""

    backend = "openai"

    def __init__(self, base_url: str, *, model: str, api_key: str | None = None, timeout: float = 600.0,
                 send_repetition_penalty: bool = True, max_concurrency: int = 16):
        from openai import OpenAI

        self.name = model
        self.base_url = base_url
        self.send_repetition_penalty = send_repetition_penalty
        self.max_concurrency = max_concurrency
        key = api_key or os.environ.get("OPENAI_API_KEY") or os.environ.get("BLOOMCHAT_API_KEY") or "none"
        self._client = OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=1)

    def _kwargs(self, messages: Sequence[dict], params: GenerationParams) -> dict:
        params.validate()
        kw = dict(model=self.name, messages=check_messages(messages), temperature=params.temperature,
                  top_p=params.top_p, max_tokens=params.max_new_tokens)
        if params.seed is not None:
            kw["seed"] = params.seed
        if params.stop:
            kw["stop"] = list(params.stop)
        extra = sampling_extras(params, self.base_url) if self.send_repetition_penalty else {}
        if extra:
            kw["extra_body"] = extra
        return kw

    def _call(self, **kw):
        import openai

        try:
            return self._client.chat.completions.create(**kw)
        except openai.APIStatusError as e:
            raise BloomchatError(f"engine answered {e.status_code}: {e.message}", where=self.base_url) from None
        except openai.APIConnectionError as e:
            raise BloomchatError(f"cannot reach the engine: {e}", where=self.base_url) from None

    def stream_events(self, messages: Sequence[dict], params: GenerationParams | None = None) -> Iterator[Event]:
        params = params or GenerationParams()
        stream = self._call(stream=True, stream_options={"include_usage": True}, **self._kwargs(messages, params))
        finish, usage = None, None
        try:
            for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for ch in chunk.choices:
                    if ch.delta and ch.delta.content:
                        yield Event(text=ch.delta.content)
                    if ch.finish_reason:
                        finish = ch.finish_reason
            yield Event(done=True, finish_reason=finish or "stop",
                        prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                        completion_tokens=getattr(usage, "completion_tokens", 0) or 0)
        finally:
            stream.close()  # closing the HTTP stream makes the engine stop generating

    def stream(self, messages: Sequence[dict], params: GenerationParams | None = None) -> Iterator[str]:
        for ev in self.stream_events(messages, params):
            if ev.text:
                yield ev.text

    def reply(self, messages: Sequence[dict], params: GenerationParams | None = None) -> str:
        resp = self._call(**self._kwargs(messages, params or GenerationParams()))
        return resp.choices[0].message.content or ""

    def reply_batch(self, batch: Iterable[Sequence[dict]], params: GenerationParams | None = None,
                    *, progress: bool = False) -> list[str]:
        """Concurrent requests, so the engine can batch them."""
        batch = list(batch)
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, max(1, len(batch)))) as ex:
            futs = [ex.submit(self.reply, m, params) for m in batch]
            if progress:
                from tqdm.auto import tqdm

                for f in tqdm(futs, desc="generating", unit="reply"):
                    f.result()
            return [f.result() for f in futs]

    def close(self) -> None:
        self._client.close()
