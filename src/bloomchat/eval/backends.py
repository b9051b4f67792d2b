"""Where replies and log-likelihoods come from: a local HF model, or an OpenAI-compatible server.

Every task talks to a `Backend` (generate a batch of chats; score a batch of continuations), so
switching to vLLM or TGI is a change here only.

Local generation goes through `bloomchat.infer`'s ChatModel and continuous-batching engine, the
same code `bloomchat chat` and `bloomchat serve` answer with: prompt ids built segment by segment
as in training (each earlier bot reply followed by EOS), the engine's decoding (greedy equals
transformers' greedy token for token), stopped at EOS or at the next `<human>:` tag. Eval keeps
only what is its own: `GenParams` (the settings record written into results and the resume key,
converted to infer's GenerationParams in `GenParams.for_chat`), a sampling seed per chat (from its
content, so a resumed run samples alike), and the rule that a prompt longer than the context minus
max_new_tokens is cut from the left (`fit_prompt`). Scoring (`loglik`) is one forward pass here.
"""

from __future__ import annotations

import inspect
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol, Sequence

from bloomchat.chat_format import HUMAN_TAG
from bloomchat.errors import BloomchatError
from bloomchat.infer.params import SAMPLING_VERSION, GenerationParams

#: A reply ends where the model starts writing the user's next turn.
STOP_STRINGS: tuple[str, ...] = (HUMAN_TAG,)


@dataclass(frozen=True)
class GenParams:
    """Eval's decoding settings (serialised into results.json and the resume key); temperature 0
    means greedy. `seed` is a base: each chat samples with its own seed from it (`chat_seed`)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    top_k: int = 50  # transformers' generate default, which BLOOMChat sampled with; 0 = off; unused when greedy

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self, where: str = "generation params") -> "GenParams":
        """The checks of infer's GenerationParams (one place), plus an integer base seed."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise BloomchatError(f"seed must be an integer (got {self.seed!r})", where=where)
        GenerationParams(**self.to_dict()).validate(where)  # the values as given, top_p too under greedy
        return self

    def _infer(self, seed: int) -> GenerationParams:
        greedy = self.temperature == 0
        return GenerationParams(temperature=self.temperature, top_p=1.0 if greedy else self.top_p,
                                top_k=0 if greedy else self.top_k, repetition_penalty=self.repetition_penalty, max_new_tokens=self.max_new_tokens,
                                seed=seed, stop=STOP_STRINGS)

    def for_chat(self, chat: Sequence[dict]) -> GenerationParams:
        """The one conversion to infer's GenerationParams: this chat's own seed (also under greedy,
        where only a guard's resampling uses it), stopped at the next `<human>:`."""
        return self._infer(seed=chat_seed(chat, self.seed))


def chat_seed(chat: Sequence[dict], seed: int) -> int:
    """Sampling seed of one chat from its content: the same chat samples alike in any batch and in
    a resumed run; different chats draw different noise."""
    key = repr([dict(m) for m in chat]).encode("utf-8")
    return (seed * 1_000_003 + zlib.crc32(key)) % (2**31)


#: BLOOMChat's published inference settings (temperature 0.8, top_p 0.9, repetition penalty 1.2,
#: 512 new tokens): chat behaviour is measured the way the model is served.
BLOOMCHAT_SAMPLING = GenParams(max_new_tokens=512, temperature=0.8, top_p=0.9, repetition_penalty=1.2)


@dataclass
class Reply:
    text: str
    new_tokens: int | None = None  # None when the backend does not say
    hit_limit: bool = False  # stopped by max_new_tokens, not by EOS / a stop string
    guard_events: dict | None = None  # guard counters of this reply (guarded generation only)
    finish_reason: str | None = None


class Backend(Protocol):
    name: str

    def generate(self, chats: Sequence[list[dict]], params: GenParams) -> list[Reply]: ...

    def loglik(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, int]]: ...

    def describe(self) -> dict: ...


def cut_reply(text: str) -> str:
    """The bot's reply only: up to the next `<human>:` turn, without the leading space."""
    for s in STOP_STRINGS:
        i = text.find(s)
        if i >= 0:
            text = text[:i]
    return text.strip()


def fit_prompt(ids: Sequence[int], context: int, max_new_tokens: int, where: str = "prompt") -> list[int]:
    """The prompt's last `context - max_new_tokens` ids: a longer one is cut from the left, so the
    reply always has room for max_new_tokens (the turns nearest the question are kept)."""
    keep = context - max_new_tokens
    if keep <= 0:
        raise BloomchatError(f"max_new_tokens {max_new_tokens} leaves no room for the prompt in the "
                             f"model's context of {context} tokens", where=where)
    return list(ids[-keep:])


def reply_from_event(ev) -> Reply:
    """A Reply from an engine's (or endpoint's) final Event; `final_text` is the whole reply."""
    return Reply(text=cut_reply(ev.final_text or ""), new_tokens=ev.completion_tokens,
                 hit_limit=ev.finish_reason == "length", finish_reason=ev.finish_reason)


#: Recorded in describe() (so in results.json and the resume key): replies made by another
#: generation path (eval's own `model.generate` before) or seeding (one seed for all chats before)
#: are never mixed into a resumed run.
GENERATION = f"bloomchat.infer ChatModel, sampling v{SAMPLING_VERSION}"
SEEDS = "per chat (GenParams.for_chat)"


@dataclass
class HFBackend:
    """A local Hugging Face causal LM (any architecture), in one process, batched."""

    model_path: str
    dtype: str = "auto"  # bf16 on a GPU, float32 on CPU (CPU bf16 matmuls are slower)
    device: str | None = None
    max_length: int = 2048  # BLOOMChat's training length; longer inputs are cut from the left
    max_batch_size: int = 16  # rows the engine decodes together (the CLI passes --batch-size)
    engine: str = "builtin"  # generation engine; "vllm": vLLM in-process (log-likelihoods stay on transformers)
    name: str = "hf"
    _model: object = field(default=None, repr=False)
    _tok: object = field(default=None, repr=False)
    _chat: object = field(default=None, repr=False)

    def __post_init__(self):
        if self._model is None:  # resolved now, so results and the resume key name the real dtype
            import torch

            self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            if self.dtype == "auto":
                self.dtype = "bf16" if self.device.startswith("cuda") else "float32"

    def _load(self):
        if self._model is None:
            from bloomchat.models import load_model, load_tokenizer

            self._tok = load_tokenizer(self.model_path)
            self._model = load_model(self.model_path, dtype=self.dtype, device=self.device).eval()
            self._fit_context()
        return self._model, self._tok

    def _fit_context(self) -> None:
        """Never feed more tokens than the model has positions for (BLOOM's ALiBi config names
        none, so BLOOM keeps max_length; GPT-2 style models get their 1024)."""
        cfg = self._model.config
        for name in ("max_position_embeddings", "n_positions"):
            v = getattr(cfg, name, None)
            if isinstance(v, int) and v > 0:
                self.max_length = min(self.max_length, v)
                break
        self._takes_position_ids = "position_ids" in inspect.signature(self._model.forward).parameters

    @classmethod
    def from_loaded(cls, model, tokenizer, name_or_path: str = "<in memory>", max_length: int = 2048,
                    max_batch_size: int = 16):
        """Wrap an already loaded model (benchmarks, tests, the demo) without reloading it."""
        b = cls(model_path=name_or_path, max_length=max_length, max_batch_size=max_batch_size,
                _model=model.eval(), _tok=tokenizer)
        b.dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        b.device = str(next(model.parameters()).device)
        b._fit_context()
        return b

    def describe(self) -> dict:
        d = {"backend": "hf", "model": self.model_path, "dtype": self.dtype, "device": self.device,
             "max_length": self.max_length, "generation": GENERATION, "seeds": SEEDS}
        if self.engine != "builtin":  # named only then, so runs made before the choice existed still resume
            d["engine"] = self.engine
        return d

    # -- generation -------------------------------------------------------------------------
    def chat_model(self):
        """The ChatModel (engine) over this backend's weights, made once and shared by plain and
        guarded generation."""
        with _CHAT_LOCK:
            if self._chat is None and self.engine == "vllm":
                from bloomchat.infer.loading import load_chat_model

                self._chat = load_chat_model(self.model_path, engine="vllm", dtype=self.dtype, device=self.device,
                                             max_batch_size=self.max_batch_size)
                self._chat.context = min(self._chat.context, self.max_length)
            if self._chat is None:
                from bloomchat.infer.chat_model import ChatModel

                model, tok = self._load()
                self._chat = ChatModel(model, tok, name=str(self.model_path), max_batch_size=self.max_batch_size,
                                       context=self.max_length)
            return self._chat

    def generate(self, chats: Sequence[list[dict]], params: GenParams) -> list[Reply]:
        """All chats submitted to the engine at once (it batches them), each with its own seed."""
        if not chats:
            return []
        cm = self.chat_model()
        prompts = [fit_prompt(cm.prompt_ids(c), cm.context, params.max_new_tokens, where=f"chat {i}")
                   for i, c in enumerate(chats)]
        events = cm.generate_ids(prompts, [params.for_chat(c) for c in chats])
        return [reply_from_event(ev) for ev in events]

    def close(self) -> None:
        """Stop the engine thread (the weights stay loaded; a later generate starts it again)."""
        if self._chat is not None:
            self._chat.close()

    # -- log-likelihood ---------------------------------------------------------------------
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of context and continuation, each tokenised on its own (as in training:
        segments are tokenised separately), an empty context replaced by the BOS/EOS token."""
        _, tok = self._load()
        ctx = tok(context, add_special_tokens=False)["input_ids"] if context else []
        cont = tok(continuation, add_special_tokens=False)["input_ids"]
        if not ctx:
            start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            ctx = [start]
        return ctx, cont

    def loglik(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, int]]:
        """(sum of log p(continuation tokens | context), number of continuation tokens) per pair,
        from one forward pass for the whole batch (left padded; only the continuation
        positions go through the LM head, via `logits_to_keep`)."""
        import torch

        model, tok = self._load()
        if not pairs:
            return []
        seqs, conts = [], []
        for ctx_text, cont_text in pairs:
            ctx, cont = self.encode_pair(ctx_text, cont_text)
            if not cont:
                raise BloomchatError(f"empty continuation after tokenisation: {cont_text!r}")
            if len(cont) >= self.max_length:
                raise BloomchatError(f"continuation of {len(cont)} tokens exceeds max_length {self.max_length}")
            whole = (ctx + cont)[-(self.max_length + 1):]
            seqs.append(whole[:-1])  # inputs; targets are whole[1:]
            conts.append(cont)
        input_ids, mask = _left_pad(seqs, tok.pad_token_id if tok.pad_token_id is not None else 0)
        k = max(len(c) for c in conts)
        kwargs = {}
        if getattr(self, "_takes_position_ids", False):
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(self.device)
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                           logits_to_keep=k, **kwargs).logits
        logp = torch.log_softmax(logits.float(), dim=-1)  # (batch, k, vocab)
        out = []
        for i, cont in enumerate(conts):
            n = len(cont)
            rows = logp[i, k - n:]
            target = torch.tensor(cont, device=rows.device)
            out.append((float(rows.gather(-1, target[:, None]).sum()), n))
        return out


_CHAT_LOCK = threading.Lock()


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


@dataclass
class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint (bloomchat serve, vLLM, TGI); requests in parallel.

    It can generate but not score: chat endpoints do not return prompt log-probabilities.
    """

    model: str
    base_url: str
    api_key: str = "EMPTY"
    concurrency: int = 8  # requests in flight: enough for a server's batcher to fill a batch of 8
    timeout: float = 600.0
    http_client: object = None  # tests pass an httpx client with a mock transport
    name: str = "openai"

    def describe(self) -> dict:
        return {"backend": "openai", "model": self.model, "base_url": self.base_url, "concurrency": self.concurrency,
                "seeds": SEEDS}

    def _client(self):
        from openai import OpenAI

        kw = {"http_client": self.http_client} if self.http_client is not None else {}
        return OpenAI(base_url=self.base_url, api_key=self.api_key or "EMPTY", timeout=self.timeout,
                      max_retries=2, **kw)

    def generate(self, chats: Sequence[list[dict]], params: GenParams) -> list[Reply]:
        import openai

        from bloomchat.infer.client import sampling_extras

        client = self._client()

        def one(chat):
            gp = params.for_chat(chat)  # the per-chat seed local generation uses: bloomchat serve samples alike
            extra = sampling_extras(gp, self.base_url)
            r = client.chat.completions.create(
                model=self.model, messages=list(chat), max_tokens=gp.max_new_tokens,
                temperature=gp.temperature, top_p=gp.top_p, seed=gp.seed, extra_body=extra or None)
            choice = r.choices[0]
            n = getattr(r.usage, "completion_tokens", None) if r.usage else None
            return Reply(text=cut_reply(choice.message.content or ""), new_tokens=n,
                         hit_limit=choice.finish_reason == "length")

        try:
            with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
                return list(pool.map(one, chats))
        except openai.APIConnectionError as e:
            raise BloomchatError(f"cannot reach the OpenAI-compatible endpoint ({e.__class__.__name__})",
                                 where=self.base_url) from None
        except openai.APIStatusError as e:
            raise BloomchatError(f"endpoint answered HTTP {e.status_code}: {str(e.message)[:200]}",
                                 where=self.base_url) from None

    def close(self) -> None:  # nothing held open: a client is made per generate call
        pass

    def loglik(self, pairs):  # noqa: ARG002 - same signature as HFBackend.loglik
        raise BloomchatError("multiple-choice scoring needs log-likelihoods, which a chat endpoint does not "
                             "give: run --task mc with a local model (--backend hf)", where="--backend openai")


def make_backend(model: str, *, backend: str = "hf", dtype: str = "auto", device: str | None = None,
                 base_url: str | None = None, api_key: str | None = None, concurrency: int = 8,
                 max_length: int = 2048, max_batch_size: int = 16, engine: str = "builtin"):
    if backend == "hf":
        return HFBackend(model_path=model, dtype=dtype, device=device, max_length=max_length,
                         max_batch_size=max_batch_size, engine=engine)
    if engine != "builtin":
        raise BloomchatError("--engine chooses how a local model generates; with --backend openai the "
                             "endpoint's engine does", where="--engine")
    if backend == "openai":
        if not base_url:
            raise BloomchatError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        return OpenAIBackend(model=model, base_url=base_url, api_key=api_key or "EMPTY", concurrency=concurrency)
    raise BloomchatError(f"unknown backend {backend!r}; use hf or openai", where="--backend")


class _FittedChat:
    """A ChatModel whose prompts are cut from the left like HFBackend.generate's (`fit_prompt`),
    for the guards, which ask their backend for `stream_events(messages, params)`."""

    def __init__(self, chat_model):
        self.chat_model = chat_model
        self.name = chat_model.name

    def stream_events(self, messages, params: GenerationParams):
        ids = fit_prompt(self.chat_model.prompt_ids(messages), self.chat_model.context, params.max_new_tokens)
        return self.chat_model.stream_ids(ids, params)


class InferGeneration:
    """Chat generation measured with guards off / on (`--guards`), through `bloomchat.infer`.

    Both arms use the same engine and the same per-chat seeds, so they differ only in the guards.
    Over a local model, guards off is HFBackend.generate itself and guards on wraps the backend's
    ChatModel in infer's GuardedChat; over an endpoint both use infer's OpenAI client (the guards
    run client side). Each request gets its own GuardStats, so every reply carries its guard events.
    """

    def __init__(self, backend, guards: bool, max_batch_size: int = 16):
        self.base, self.guards, self.max_batch_size = backend, guards, max_batch_size
        self._client = None  # infer's OpenAI client (endpoint backends only; ours to close)

    def _chat_backend(self):
        if isinstance(self.base, HFBackend):
            return _FittedChat(self.base.chat_model())
        if isinstance(self.base, OpenAIBackend):
            if self._client is None:
                from bloomchat.infer.client import OpenAIChatClient

                self._client = OpenAIChatClient(self.base.base_url, model=self.base.model, api_key=self.base.api_key,
                                                max_concurrency=self.base.concurrency)
            return self._client
        raise BloomchatError(f"guards need a local model or an OpenAI endpoint, not {self.base.name}")

    def describe(self) -> dict:
        return {**self.base.describe(), "engine": "bloomchat.infer", "guards": self.guards}

    def generate(self, chats: Sequence[list[dict]], params: GenParams) -> list[Reply]:
        from bloomchat.infer.guards import GuardConfig, GuardedChat, GuardStats

        if not chats:
            return []
        chat = self._chat_backend()
        if not self.guards and isinstance(self.base, HFBackend):
            return self.base.generate(chats, params)

        def one(messages):
            stats = GuardStats() if self.guards else None
            target = GuardedChat(chat, GuardConfig(), stats) if self.guards else chat
            pieces, final = [], None
            for ev in target.stream_events(list(messages), params.for_chat(messages)):
                if ev.text:
                    pieces.append(ev.text)
                if ev.done:
                    final = ev
            if final is None:
                raise RuntimeError("generation ended without a final event")
            if final.finish_reason == "error":
                raise RuntimeError(f"generation failed: {final.error}")
            # a guard that ended the reply itself (a loop cut, moderation) gives the whole reply as
            # final_text and cannot say how many tokens the engine had made: new_tokens None then
            guard_ended = final.final_text is not None or final.finish_reason == "content_filter"
            text = final.final_text if final.final_text is not None else "".join(pieces)
            r = reply_from_event(replace(final, final_text=text))
            if guard_ended:
                r.new_tokens = None
            if stats is not None:
                r.guard_events = {k: v for k, v in stats.snapshot().items() if v and k != "requests"}
            return r

        with ThreadPoolExecutor(max_workers=max(1, min(len(chats), self.max_batch_size))) as pool:
            return list(pool.map(one, chats))

    def close(self) -> None:
        """Close the endpoint client made here (a local backend's engine belongs to the backend)."""
        if self._client is not None and hasattr(self._client, "close"):
            self._client.close()
        self._client = None
