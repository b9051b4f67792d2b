"""Where replies and log-likelihoods come from: a local HF model, or an OpenAI-compatible server.

Every task talks to a `Backend` (generate a batch of chats; score a batch of continuations), so
switching to `bloomchat.infer`'s engine, vLLM or TGI is a change here only.

Local generation: the chat template (`<human>: ...\\n<bot>:`), left padding so a batch ends
aligned at the prompt, `model.generate`, stopped at EOS or at the next `<human>:` tag.
"""

from __future__ import annotations

import inspect
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence

from bloomchat.chat_format import HUMAN_TAG
from bloomchat.errors import BloomchatError

#: A reply ends where the model starts writing the user's next turn.
STOP_STRINGS: tuple[str, ...] = (HUMAN_TAG,)


@dataclass(frozen=True)
class GenParams:
    """Decoding settings; temperature 0 means greedy (translation, reproducible evaluation)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


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


def _seed_for(chats: Sequence[list[dict]], seed: int) -> int:
    """Sampling seed from the batch's content, so a resumed run samples the same batches alike."""
    return (seed * 1_000_003 + zlib.crc32(repr(chats[0]).encode("utf-8"))) % (2**31)


@dataclass
class HFBackend:
    """A local Hugging Face causal LM (any architecture), in one process, batched."""

    model_path: str
    dtype: str = "auto"  # bf16 on a GPU, float32 on CPU (CPU bf16 matmuls are slower)
    device: str | None = None
    max_length: int = 2048  # BLOOMChat's training length; longer inputs are cut from the left
    name: str = "hf"
    _model: object = field(default=None, repr=False)
    _tok: object = field(default=None, repr=False)

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
    def from_loaded(cls, model, tokenizer, name_or_path: str = "<in memory>", max_length: int = 2048):
        """Wrap an already loaded model (benchmarks, tests, the demo) without reloading it."""
        b = cls(model_path=name_or_path, max_length=max_length, _model=model.eval(), _tok=tokenizer)
        b.dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        b.device = str(next(model.parameters()).device)
        b._fit_context()
        return b

    def describe(self) -> dict:
        return {"backend": "hf", "model": self.model_path, "dtype": self.dtype, "device": self.device,
                "max_length": self.max_length}

    # -- generation -------------------------------------------------------------------------
    def generate(self, chats: Sequence[list[dict]], params: GenParams) -> list[Reply]:
        import torch

        model, tok = self._load()
        if not chats:
            return []
        texts = tok.apply_chat_template([list(c) for c in chats], add_generation_prompt=True, tokenize=False)
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        keep = self.max_length - params.max_new_tokens
        if keep <= 0:
            raise BloomchatError(f"max_new_tokens {params.max_new_tokens} leaves no room for the prompt "
                                 f"in max_length {self.max_length}")
        ids = [x[-keep:] for x in ids]
        input_ids, mask = _left_pad(ids, tok.pad_token_id)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        eos = tok.eos_token_id
        kwargs = dict(max_new_tokens=params.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=eos,
                      stop_strings=list(STOP_STRINGS), tokenizer=tok,
                      repetition_penalty=params.repetition_penalty)
        if params.temperature > 0:
            torch.manual_seed(_seed_for(chats, params.seed))
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        new = out[:, input_ids.shape[1]:].tolist()
        replies = []
        for row in new:
            n = len(row)
            ended = False
            for j, t in enumerate(row):
                if t == eos:
                    n, ended = j, True
                    break
            raw = tok.decode(row[:n], skip_special_tokens=True)
            text = cut_reply(raw)
            stopped = ended or any(s in raw for s in STOP_STRINGS)
            if not stopped:  # trailing pads after a stop string are cut above; count real tokens
                while n and row[n - 1] == tok.pad_token_id:
                    n -= 1
            replies.append(Reply(text=text, new_tokens=n, hit_limit=not stopped and n >= params.max_new_tokens))
        return replies

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
        return {"backend": "openai", "model": self.model, "base_url": self.base_url, "concurrency": self.concurrency}

    def _client(self):
        from openai import OpenAI

        kw = {"http_client": self.http_client} if self.http_client is not None else {}
        return OpenAI(base_url=self.base_url, api_key=self.api_key or "EMPTY", timeout=self.timeout,
                      max_retries=2, **kw)

    def generate(self, chats: Sequence[list[dict]], params: GenParams) -> list[Reply]:
        import openai

        client = self._client()

        def one(chat):
            extra = {}
            if params.repetition_penalty != 1.0:
                extra["repetition_penalty"] = params.repetition_penalty  # vLLM / TGI / bloomchat serve
            r = client.chat.completions.create(
                model=self.model, messages=list(chat), max_tokens=params.max_new_tokens,
                temperature=params.temperature, top_p=params.top_p if params.temperature > 0 else 1.0,
                seed=params.seed, extra_body=extra or None)
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

    def loglik(self, pairs):  # noqa: ARG002 - same signature as HFBackend.loglik
        raise BloomchatError("multiple-choice scoring needs log-likelihoods, which a chat endpoint does not "
                             "give: run --task mc with a local model (--backend hf)", where="--backend openai")


def make_backend(model: str, *, backend: str = "hf", dtype: str = "auto", device: str | None = None,
                 base_url: str | None = None, api_key: str | None = None, concurrency: int = 8,
                 max_length: int = 2048):
    if backend == "hf":
        return HFBackend(model_path=model, dtype=dtype, device=device, max_length=max_length)
    if backend == "openai":
        if not base_url:
            raise BloomchatError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        return OpenAIBackend(model=model, base_url=base_url, api_key=api_key or "EMPTY", concurrency=concurrency)
    raise BloomchatError(f"unknown backend {backend!r}; use hf or openai", where="--backend")


class InferGeneration:
    """Generation through `bloomchat.infer` (the served engine), with or without its guards.

    Used when chat behaviour is measured with guards: both arms (guards off / on) then go
    through the same engine and the same per-prompt seeds, so they differ only in the guards.
    Over a local model it shares the weights already loaded by HFBackend; over an endpoint it
    uses infer's OpenAI client. Each request gets its own GuardStats, so the guard events of
    every reply are recorded with it.
    """

    def __init__(self, backend, guards: bool, max_batch_size: int = 16):
        self.base, self.guards, self.max_batch_size = backend, guards, max_batch_size
        self._chat = None

    def _chat_backend(self):
        if self._chat is None:
            if isinstance(self.base, HFBackend):
                from bloomchat.infer.chat_model import ChatModel

                model, tok = self.base._load()
                self._chat = ChatModel(model, tok, name=str(self.base.model_path), max_batch_size=self.max_batch_size,
                                       context=self.base.max_length)
            elif isinstance(self.base, OpenAIBackend):
                from bloomchat.infer.client import OpenAIChatClient

                self._chat = OpenAIChatClient(self.base.base_url, model=self.base.model, api_key=self.base.api_key,
                                              max_concurrency=self.base.concurrency)
            else:
                raise BloomchatError(f"guards need a local model or an OpenAI endpoint, not {self.base.name}")
        return self._chat

    def describe(self) -> dict:
        return {**self.base.describe(), "engine": "bloomchat.infer", "guards": self.guards}

    def generate(self, chats: Sequence[list[dict]], params: GenParams) -> list[Reply]:
        from bloomchat.infer.guards import GuardConfig, GuardedChat, GuardStats
        from bloomchat.infer.params import GenerationParams

        chat = self._chat_backend()

        def one(messages):
            gp = GenerationParams(temperature=params.temperature, top_p=params.top_p if params.temperature > 0 else 1.0,
                                  repetition_penalty=params.repetition_penalty, max_new_tokens=params.max_new_tokens,
                                  seed=_seed_for([messages], params.seed), stop=STOP_STRINGS)
            stats = GuardStats() if self.guards else None
            target = GuardedChat(chat, GuardConfig(), stats) if self.guards else chat
            pieces, final = [], None
            for ev in target.stream_events(list(messages), gp):
                if ev.text:
                    pieces.append(ev.text)
                if ev.done:
                    final = ev
            if final is not None and final.finish_reason == "error":
                raise RuntimeError(f"generation failed: {final.error}")
            r = Reply(text=cut_reply("".join(pieces)),
                      new_tokens=final.completion_tokens if final else None,
                      hit_limit=bool(final and final.finish_reason == "length"))
            if stats is not None:
                r.guard_events = {k: v for k, v in stats.snapshot().items() if v and k != "requests"}
                r.finish_reason = final.finish_reason if final else None
            return r

        with ThreadPoolExecutor(max_workers=max(1, min(len(chats), self.max_batch_size))) as pool:
            return list(pool.map(one, chats))

    def close(self) -> None:
        if self._chat is not None and hasattr(self._chat, "close"):
            self._chat.close()
            self._chat = None

