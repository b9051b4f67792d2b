"""A chat model you can ask: `reply`, `stream`, `reply_batch` over the continuous-batching engine.

    from bloomchat.infer import load_chat_model, GenerationParams
    cm = load_chat_model("out/stage2", quantize="int8")
    cm.reply([{"role": "user", "content": "你好"}], GenerationParams(temperature=0))

The prompt is built exactly as training tokenised it (bloomchat.chat_tokens: the chat template's
text, each earlier bot reply followed by EOS, tokenised whole), so a multi-turn prompt looks to
the model like its training data; its ids equal the tokenizer's chat template output.
A tokenizer with a different chat template (another family's chat model) uses that template.
"""

from __future__ import annotations

import queue
from dataclasses import replace
from typing import Iterable, Iterator, Sequence

from bloomchat.chat_format import CHAT_TEMPLATE
from bloomchat.errors import BloomchatError
from bloomchat.infer.engine import BatchEngine, Event
from bloomchat.infer.params import GenerationParams

#: BLOOM was trained on 2048-token sequences and BLOOMChat fine-tuned at 2048; ALiBi configs
#: carry no max_position_embeddings, so this is the context when the config names none.
DEFAULT_CONTEXT = 2048
ROLES = ("system", "user", "assistant")


def check_messages(messages, where: str = "messages") -> list[dict[str, str]]:
    """Validate OpenAI-style messages; returns them as plain {'role','content'} dicts."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise BloomchatError("must be a non-empty list of {role, content}", where=where)
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BloomchatError("must be an object with role and content", where=f"{where}[{i}]")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise BloomchatError(f"role must be one of {', '.join(ROLES)} (got {role!r})", where=f"{where}[{i}].role")
        if not isinstance(content, str):
            raise BloomchatError("content must be a string", where=f"{where}[{i}].content")
        out.append({"role": role, "content": content})
    if all(m["role"] == "system" for m in out):
        raise BloomchatError("needs at least one user or assistant message", where=where)
    return out


def eos_token_ids(generation_config, tokenizer) -> list[int]:
    """The ids that end a reply: the generation config's EOS (one or several), else the tokenizer's."""
    eos = generation_config.eos_token_id if generation_config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


def context_length(model) -> int:
    """The model's positions as its config names them (a model or a config), else BLOOM's 2048."""
    cfg = getattr(model, "config", model)
    for name in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return DEFAULT_CONTEXT


class ChatModel:
    """A loaded model + tokenizer behind one continuous-batching engine (thread-safe)."""

    backend = "local"

    def __init__(self, model, tokenizer, *, name: str = "bloomchat", max_batch_size: int = 16,
                 context: int | None = None, engine=None):
        """`engine`: an engine with BatchEngine's contract that owns the weights itself (VllmEngine);
        `model` is then None and `context` must be given."""
        self.model = model.eval() if model is not None else None
        self.tokenizer = tokenizer
        self.name = name
        self._bloomchat_format = getattr(tokenizer, "chat_template", None) in (None, CHAT_TEMPLATE)
        if engine is not None:
            self.context, self.eos_ids, self.engine = context, sorted(engine.eos_ids), engine
            return
        self.context = context or context_length(model)
        self.eos_ids = eos_token_ids(model.generation_config, tokenizer)
        self.engine = BatchEngine(model, tokenizer, max_batch_size=max_batch_size, eos_token_ids=self.eos_ids)

    # ---------------------------------------------------------------- prompts
    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        """Token ids of the generation prompt (ends with `<bot>:`): exactly the tokenizer's
        `apply_chat_template(messages, add_generation_prompt=True)`, and a prefix of the ids the
        packer trained on (one shared encoder, `bloomchat.chat_tokens.prompt_ids`; a tokenizer with
        the legacy BLOOMChat template, which lacked the EOS after replies, is encoded as training did)."""
        from bloomchat.chat_tokens import prompt_ids

        return prompt_ids(self.tokenizer, check_messages(messages))

    def check_fits(self, n_prompt: int, max_new_tokens: int, where: str = "request") -> None:
        if n_prompt + max_new_tokens > self.context:
            raise BloomchatError(
                f"prompt ({n_prompt} tokens) plus max_tokens ({max_new_tokens}) is {n_prompt + max_new_tokens} "
                f"tokens, beyond the model's context of {self.context} tokens; shorten the conversation or "
                f"lower max_tokens", where=where)

    # ---------------------------------------------------------------- generation
    def submit_ids(self, ids: list[int], params: GenerationParams, sink, stop_texts=None):
        """Low level: queue a prompt on the engine; `sink(Event)` is called from the engine thread."""
        params.validate()
        self.check_fits(len(ids), params.max_new_tokens)
        return self.engine.submit(ids, params, sink, stop_texts=stop_texts)

    def stream_ids(self, ids: list[int], params: GenerationParams, stop_texts=None) -> Iterator[Event]:
        q: queue.Queue[Event] = queue.Queue()
        handle = self.submit_ids(ids, params, q.put, stop_texts=stop_texts)
        try:
            while True:
                ev = q.get()
                yield ev
                if ev.done:
                    if ev.finish_reason == "error":
                        raise RuntimeError(f"generation failed: {ev.error}")
                    return
        finally:
            handle.cancel()  # no-op when finished; stops generation when the caller stopped reading

    def stream_events(self, messages: Sequence[dict], params: GenerationParams | None = None) -> Iterator[Event]:
        """Text pieces as Events, then a final Event with finish_reason and token counts."""
        return self.stream_ids(self.prompt_ids(messages), params or GenerationParams())

    def stream(self, messages: Sequence[dict], params: GenerationParams | None = None) -> Iterator[str]:
        """Yield the reply's text pieces as they are generated."""
        for ev in self.stream_events(messages, params):
            if ev.text:
                yield ev.text

    def reply(self, messages: Sequence[dict], params: GenerationParams | None = None) -> str:
        return "".join(self.stream(messages, params))

    def reply_batch(self, batch: Iterable[Sequence[dict]], params: GenerationParams | None = None,
                    *, progress: bool = False) -> list[str]:
        """Replies to many conversations, all submitted at once so the engine batches them."""
        params = (params or GenerationParams()).validate()
        prompts = [self.prompt_ids(m) for m in batch]
        # a fixed seed would make every conversation sample the same noise: offset it per item
        per_item = [params if params.seed is None else params.replace(seed=params.seed + i)
                    for i in range(len(prompts))]
        return [ev.final_text for ev in self.generate_ids(prompts, per_item, progress=progress)]

    def generate_ids(self, prompts: Sequence[list[int]], params: GenerationParams | Sequence[GenerationParams],
                     *, progress: bool = False) -> list[Event]:
        """Generate for many prompts (token ids) at once, so the engine batches them.

        `params` is one GenerationParams for all, or one per prompt (e.g. a seed per item).
        Returns each prompt's final Event: finish_reason ("stop" | "length"), prompt_tokens,
        completion_tokens (generated tokens, EOS included) and final_text (the whole reply).
        """
        prompts = [list(p) for p in prompts]
        per_item = [params] * len(prompts) if isinstance(params, GenerationParams) else list(params)
        if len(per_item) != len(prompts):
            raise ValueError(f"{len(per_item)} params for {len(prompts)} prompts")
        for i, (p, pi) in enumerate(zip(prompts, per_item)):
            pi.validate(where=f"batch[{i}] params")
            self.check_fits(len(p), pi.max_new_tokens, where=f"batch[{i}]")
        texts: list[list[str]] = [[] for _ in prompts]
        finals: list[Event | None] = [None] * len(prompts)
        done: queue.Queue[int] = queue.Queue()
        handles = []
        for i, (p, pi) in enumerate(zip(prompts, per_item)):
            def sink(ev: Event, i=i):
                if ev.text:
                    texts[i].append(ev.text)
                if ev.done:
                    finals[i] = ev
                    done.put(i)
            handles.append(self.engine.submit(p, pi, sink))
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(prompts), desc="generating", unit="reply")
        try:
            for _ in prompts:
                ev = finals[done.get()]
                if ev.finish_reason == "error":
                    raise RuntimeError(f"generation failed: {ev.error}")
                if bar:
                    bar.update(1)
        finally:
            for h in handles:
                h.cancel()
            if bar:
                bar.close()
        return [replace(ev, final_text="".join(t)) for ev, t in zip(finals, texts)]

    def close(self) -> None:
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
