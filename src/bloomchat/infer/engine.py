"""Continuous batching on a Hugging Face causal LM: many requests share every forward pass.

Why not `model.generate`: it serves one fixed batch from start to end, so a request that arrives
while another is generating waits for it to finish (bench/bench_serve.py measures the gap). Here a
background thread runs one decoding step at a time for all active requests; new requests are
prefilled and merged into the running batch between steps (their KV cache left-padded to the
batch's length: BLOOM's ALiBi and the attention mask make padding invisible), finished or
cancelled ones leave at once. transformers' own continuous batching needs paged attention, which
BLOOM's ALiBi attention does not implement.

Sampling is vectorised per row so one batch can mix requests with different temperature, top_k,
top_p and repetition penalty (transformers' logits processors take one value per batch). The order
is transformers': repetition penalty (over prompt and reply tokens, special tokens excepted: a
multi-turn prompt holds `</s>` after each earlier reply, and penalising it would make the model
less likely to stop), temperature, top-k, top-p; top-p draws
by rejection (`sample_top_p`) instead of sorting the vocabulary, and only the last position's
logits are computed (`logits_to_keep=1`: a 2048-token BLOOM prompt would otherwise make 2 GB of them).
"""

from __future__ import annotations

import inspect
import itertools
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from bloomchat.infer.params import GenerationParams

#: Text that ends a reply: the next human turn the model starts to write.
DEFAULT_STOP_TEXTS: tuple[str, ...] = ("<human>:",)
#: Most prompt tokens prefilled in one step; bounds how long decoding of others pauses for new
#: arrivals (8 prompts of 1k tokens = 8192).
PREFILL_TOKEN_BUDGET = 8192


@dataclass
class Event:
    """What a request's sink receives: text pieces, then one final event with `done=True`."""

    text: str = ""
    done: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    final_text: str | None = None  # set by guards that cut text already streamed (the whole reply)


@dataclass
class _Seq:
    rid: int
    prompt_ids: list[int]
    params: GenerationParams
    sink: Callable[[Event], None]
    stop_texts: tuple[str, ...]
    cancelled: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator | None = None
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the reply text already given to the sink
    text: str = ""  # the reply decoded so far (up to its last complete character)
    read_from: int = 0  # `ids` from here on are decoded again each step (see `detokenize_step`)
    read_to: int = 0  # ... and those before this index were already in `text`

    def cancel(self) -> None:
        self.cancelled.set()


class Handle:
    """What `submit` returns: lets the caller cancel the request (a client went away)."""

    def __init__(self, seq: _Seq, engine: "BatchEngine"):
        self._seq = seq
        self._engine = engine
        self.prompt_tokens = len(seq.prompt_ids)

    def cancel(self) -> None:
        self._seq.cancel()
        self._engine._wake()


def _holdback(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


#: Candidates looked at before falling back to a threshold search (covers the nucleus of a
#: trained model's distribution at nearly every step).
TOP_P_FAST_K = 256
TOP_P_BISECT_STEPS = 32  # float32 probabilities: max_p / 2**32 is below their spacing


def nucleus_probs(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero the tokens outside each row's top-p nucleus (transformers' TopPLogitsWarper set).

    A token is kept when the mass of the tokens more likely than it is below top_p. transformers
    sorts the whole vocabulary per row (1-10 ms for 16k-250k tokens, per row and step, more than
    a small model's forward pass). Here: a top-256 look decides the rows whose nucleus lies within
    it; the others find the nucleus' probability threshold by bisection, a few vectorised passes
    over the batch. Same set as sorting, up to float rounding.
    """
    keep = torch.zeros_like(probs, dtype=torch.bool)
    k = min(TOP_P_FAST_K, probs.shape[-1])
    top, top_idx = probs.topk(k, dim=-1)
    exclusive = top.cumsum(dim=-1) - top  # mass of the tokens before each one
    covered = (exclusive[:, -1] + top[:, -1]) >= top_p
    fast_keep = exclusive < top_p.unsqueeze(1)
    fast_keep[:, 0] = True
    keep.scatter_(1, top_idx, fast_keep)
    slow = (~covered).nonzero()[:, 0]
    if slow.numel():
        p, tp = probs[slow], top_p[slow]
        lo = torch.zeros(len(slow), device=probs.device, dtype=probs.dtype)
        hi = p.max(dim=-1).values
        for _ in range(TOP_P_BISECT_STEPS):  # smallest t with mass(p > t) < top_p
            mid = (lo + hi) / 2
            ok = (p * (p > mid.unsqueeze(1))).sum(dim=-1) < tp
            hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
        keep[slow] = p > lo.unsqueeze(1)
    return probs * keep


#: Rejection rounds before the exact nucleus is computed for the rows still unsampled; a round
#: accepts with probability >= top_p (0.9 by default), so 8 rounds leave ~1e-8 of rows.
TOP_P_REJECTION_ROUNDS = 8


def _multinomial(probs: torch.Tensor, gens: list) -> torch.Tensor:
    """One draw per row by inverse CDF: the first token whose cumulative mass exceeds u * total,
    u ~ U[0, 1). Rows with their own generator (a seed) draw their u from it.

    Why not `torch.multinomial`: for 8 rows of 16k probabilities it took 2.0 ms on CPU, 40% of a
    decoding step (cProfile); it draws a random number per vocabulary entry. One uniform and a
    cumulative sum per row take 0.1 ms. The distribution test in tests/infer checks the result."""
    cdf = probs.cumsum(dim=-1)
    u = torch.empty((probs.shape[0], 1), dtype=cdf.dtype, device=probs.device)
    if all(g is None for g in gens):
        u.uniform_()
    else:
        for j, g in enumerate(gens):
            u[j].uniform_(generator=g)
    # cdf[:, -1] (not a separate sum) bounds u * total, so some token's cdf always exceeds it;
    # right=True steps over zero-probability tokens, whose cdf equals their predecessor's
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor,
                             penalisable: torch.Tensor | None = None) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor with a penalty per row ([B, 1]): a seen
    token's logit is divided by the penalty when positive, multiplied when negative. Tokens where
    `penalisable` ([V] bool) is False (special tokens such as EOS) keep their logit."""
    mask = seen if penalisable is None else seen & penalisable
    return torch.where(mask, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def top_k_probs(probs: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep each row's `top_k` most likely tokens (ties with the k-th kept, as transformers'
    TopKLogitsWarper), renormalised; rows with top_k 0 (off) or beyond the vocabulary unchanged."""
    vocab = probs.shape[-1]
    active = (top_k > 0) & (top_k < vocab)
    if not bool(active.any()):
        return probs
    k = top_k.clamp(1, vocab)
    kmax = int(k[active].max())
    kth = probs.topk(kmax, dim=-1).values.gather(1, (k.clamp(max=kmax) - 1).unsqueeze(1))
    keep = (probs >= kth) | ~active.unsqueeze(1)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


def sample_top_p(probs: torch.Tensor, top_p: torch.Tensor, gens: list) -> torch.Tensor:
    """Draw from each row's top-p nucleus by rejection: draw from the whole distribution and
    accept when the token is in the nucleus (the mass of more likely tokens is below top_p).

    Accepted draws follow p restricted to the nucleus and renormalised: exactly top-p sampling,
    at the cost of one draw and one masked sum per row instead of a full-vocabulary sort.
    """
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    pending = list(range(probs.shape[0]))
    for _ in range(TOP_P_REJECTION_ROUNDS):
        p = probs[pending]
        toks = _multinomial(p, [gens[j] for j in pending])
        pt = p.gather(1, toks[:, None])
        above = (p * (p > pt)).sum(dim=-1)
        ok = (above < top_p[pending]).tolist()
        for j, tok, accept in zip(pending, toks.tolist(), ok):
            if accept:
                out[j] = tok
        pending = [j for j, accept in zip(pending, ok) if not accept]
        if not pending:
            return out
    p = nucleus_probs(probs[pending], top_p[pending])
    out[pending] = _multinomial(p, [gens[j] for j in pending])
    return out


class BatchEngine:
    """Owns a model and a background thread that decodes all submitted requests together."""

    def __init__(self, model, tokenizer, *, max_batch_size: int = 16,
                 stop_texts: tuple[str, ...] = DEFAULT_STOP_TEXTS, eos_token_ids: list[int] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.stop_texts = stop_texts
        self.device = next(model.parameters()).device
        self.vocab_size: int | None = None  # the logits' width, known after the first forward
        self.eos_ids = set(eos_token_ids or [])
        sig = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in sig else "past_key_values"
        self._wants_positions = "position_ids" in sig
        self._last_logits_only = "logits_to_keep" in sig
        self._pending: queue.Queue[_Seq] = queue.Queue()
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._lock = threading.Lock()
        # batch state (touched only by the worker thread)
        self._rows: list[_Seq] = []
        self._cache = None
        self._mask: torch.Tensor | None = None  # [B, L] 1 = real token
        self._next: torch.Tensor | None = None  # [B, 1] sampled, not yet fed
        self._seen: torch.Tensor | None = None  # [B, V] bool: tokens in prompt or reply
        self._penalty_mask: torch.Tensor | None = None  # see _penalisable
        self.steps = 0  # decoding steps run (a bench figure)
        self.max_rows_seen = 0  # largest batch so far (tests check that batching happened)

    # ---------------------------------------------------------------- public, any thread
    def submit(self, prompt_ids: list[int], params: GenerationParams, sink: Callable[[Event], None],
               stop_texts: tuple[str, ...] | None = None) -> Handle:
        stops = tuple(stop_texts if stop_texts is not None else self.stop_texts) + tuple(params.stop)
        seq = _Seq(next(self._ids), list(prompt_ids), params, sink, stops)
        if params.seed is not None and not params.greedy:
            seq.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        self._ensure_thread()
        self._pending.put(seq)
        self._wake()
        return Handle(seq, self)

    @property
    def active(self) -> int:
        return len(self._rows) + self._pending.qsize()

    def close(self) -> None:
        self._closing = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # ---------------------------------------------------------------- worker
    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._closing = False
                self._thread = threading.Thread(target=self._loop, name="bloomchat-engine", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while not self._closing:
            if not self._rows and self._pending.empty():
                with self._cv:
                    self._cv.wait_for(lambda: self._closing or not self._pending.empty(), timeout=1.0)
                continue
            try:
                with torch.inference_mode():
                    # admit everything waiting (requests that arrived during a prefill too) before the
                    # next decoding step: a new request's first token comes from its prefill
                    while not self._pending.empty() and len(self._rows) < self.max_batch_size:
                        if not self._admit():
                            break
                    self._decode()
            except Exception as e:  # a bug or OOM: fail the requests in flight, keep serving
                msg = f"{type(e).__name__}: {e}"
                for s in self._rows:
                    s.sink(Event(done=True, finish_reason="error", error=msg,
                                 prompt_tokens=len(s.prompt_ids), completion_tokens=len(s.ids)))
                self._reset_batch()
        for s in self._rows:
            s.sink(Event(done=True, finish_reason="cancelled"))
        self._reset_batch()

    def _reset_batch(self) -> None:
        self._rows, self._cache, self._mask, self._next, self._seen = [], None, None, None, None

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, cache):
        kw = {self._cache_kw: cache, "attention_mask": mask, "use_cache": True}
        if self._last_logits_only:
            kw["logits_to_keep"] = 1
        if self._wants_positions:
            pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
            kw["position_ids"] = pos[:, -input_ids.shape[1]:]
        out = self.model(input_ids=input_ids, **kw)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = out.past_key_values
        return out.logits[:, -1, :].float(), new_cache

    def _admit(self) -> bool:
        """Prefill waiting requests into the batch; False when there was nothing to admit."""
        new: list[_Seq] = []
        budget = PREFILL_TOKEN_BUDGET
        while len(self._rows) + len(new) < self.max_batch_size:
            try:
                seq = self._pending.get_nowait()
            except queue.Empty:
                break
            if seq.cancelled.is_set():
                seq.sink(Event(done=True, finish_reason="cancelled", prompt_tokens=len(seq.prompt_ids)))
                continue
            new.append(seq)
            budget -= len(seq.prompt_ids)
            if budget <= 0:
                break
        if not new:
            return False
        width = max(len(s.prompt_ids) for s in new)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(new), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for i, s in enumerate(new):
            ids[i, width - len(s.prompt_ids):] = torch.tensor(s.prompt_ids, dtype=torch.long)
            mask[i, width - len(s.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits, cache = self._forward(ids, mask, None)
        self.vocab_size = logits.shape[-1]
        seen = torch.zeros((len(new), self.vocab_size), dtype=torch.bool, device=self.device)
        for i, s in enumerate(new):
            seen[i, torch.tensor([t for t in s.prompt_ids if t < self.vocab_size], dtype=torch.long,
                                 device=self.device)] = True
        nxt = self._sample(logits, new, seen)
        keep = self._process(new, nxt)
        if not keep:
            return True
        if len(keep) < len(new):
            idx = torch.tensor(keep, dtype=torch.long, device=self.device)
            cache.batch_select_indices(idx)
            mask, nxt, seen = mask[idx], nxt[idx], seen[idx]
        self._merge([new[i] for i in keep], cache, mask, nxt, seen)
        return True

    def _decode(self) -> None:
        if not self._rows:
            return
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
        logits, self._cache = self._forward(self._next, self._mask, self._cache)
        self.steps += 1
        nxt = self._sample(logits, self._rows, self._seen)
        self._next = nxt
        self._keep(self._process(self._rows, nxt))

    # ---------------------------------------------------------------- batch surgery
    def _merge(self, rows: list[_Seq], cache, mask: torch.Tensor, nxt: torch.Tensor, seen: torch.Tensor) -> None:
        if not self._rows:
            self._rows, self._cache, self._mask, self._next, self._seen = list(rows), cache, mask, nxt, seen
        else:
            la, lb = self._mask.shape[1], mask.shape[1]
            width = max(la, lb)
            for old_layer, new_layer in zip(self._cache.layers, cache.layers):
                for attr in ("keys", "values"):
                    a, b = getattr(old_layer, attr), getattr(new_layer, attr)
                    a = F.pad(a, (0, 0, width - la, 0)) if la < width else a
                    b = F.pad(b, (0, 0, width - lb, 0)) if lb < width else b
                    setattr(old_layer, attr, torch.cat([a, b], dim=0))
            self._mask = torch.cat([F.pad(self._mask, (width - la, 0)), F.pad(mask, (width - lb, 0))], dim=0)
            self._next = torch.cat([self._next, nxt], dim=0)
            self._seen = torch.cat([self._seen, seen], dim=0)
            self._rows.extend(rows)
        self.max_rows_seen = max(self.max_rows_seen, len(self._rows))

    def _keep(self, keep: list[int]) -> None:
        if not keep:
            self._reset_batch()
            return
        if len(keep) == len(self._rows):
            return
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        self._rows = [self._rows[i] for i in keep]
        self._cache.batch_select_indices(idx)
        self._mask, self._next, self._seen = self._mask[idx], self._next[idx], self._seen[idx]
        start = int(self._mask.any(dim=0).long().argmax())  # leading columns that are padding for all
        if start > 0:
            self._mask = self._mask[:, start:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[..., start:, :]
                layer.values = layer.values[..., start:, :]

    # ---------------------------------------------------------------- sampling and text
    def _sample(self, logits: torch.Tensor, rows: list[_Seq], seen: torch.Tensor) -> torch.Tensor:
        dev = logits.device
        pen = torch.tensor([s.params.repetition_penalty for s in rows], device=dev).unsqueeze(1)
        logits = apply_repetition_penalty(logits, seen, pen, self._penalisable(logits.shape[-1]))
        temps = torch.tensor([s.params.temperature for s in rows], device=dev).unsqueeze(1)
        out = logits.argmax(dim=-1)
        sampled_rows = [i for i, s in enumerate(rows) if not s.params.greedy]
        if sampled_rows:
            idx = torch.tensor(sampled_rows, device=dev)
            top_p = torch.tensor([rows[i].params.top_p for i in sampled_rows], device=dev)
            top_k = torch.tensor([rows[i].params.top_k for i in sampled_rows], device=dev)
            probs = top_k_probs((logits[idx] / temps[idx]).softmax(dim=-1), top_k)
            gens = [rows[i].generator for i in sampled_rows]
            for j, tok in enumerate(sample_top_p(probs, top_p, gens).tolist()):
                out[sampled_rows[j]] = tok
        seen.scatter_(1, out.unsqueeze(1), True)
        return out.unsqueeze(1)

    def _penalisable(self, vocab: int) -> torch.Tensor:
        """[V] bool: False for special tokens (EOS, pad...), which the repetition penalty spares."""
        if self._penalty_mask is None or self._penalty_mask.shape[0] != vocab:
            mask = torch.ones(vocab, dtype=torch.bool, device=self.device)
            special = set(self.eos_ids) | set(getattr(self.tokenizer, "all_special_ids", None) or ())
            idx = [t for t in special if isinstance(t, int) and 0 <= t < vocab]
            if idx:
                mask[torch.tensor(idx, dtype=torch.long, device=self.device)] = False
            self._penalty_mask = mask
        return self._penalty_mask

    def _process(self, rows: list[_Seq], nxt: torch.Tensor) -> list[int]:
        """Give each row its new token (`advance`); returns the rows to keep."""
        return [i for i, (s, tok) in enumerate(zip(rows, nxt[:, 0].tolist()))
                if advance(s, tok, self.eos_ids, self.tokenizer)]


def detokenize_step(s: _Seq, tokenizer) -> None:
    """Extend `s.text` by the new token's text, decoding only the last few tokens.

    Decoding the whole reply every step costs O(n) a token, O(n^2) a reply. As in TGI and
    vLLM, the tokens from `read_from` are decoded with and without the newest ones; the
    difference is the new text, taken once it ends in a complete character. Starting both
    decodes at the same token keeps tokenizers that drop a leading space (SentencePiece)
    exact. tests/infer checks the result against full decoding at every step.
    """
    dec = tokenizer.decode
    before = dec(s.ids[s.read_from:s.read_to], skip_special_tokens=True)
    now = dec(s.ids[s.read_from:], skip_special_tokens=True)
    if len(now) > len(before) and not now.endswith("\ufffd"):
        s.text += now[len(before):]
        s.read_from, s.read_to = s.read_to, len(s.ids)


def advance(s: _Seq, tok: int, eos_ids: set[int], tokenizer) -> bool:
    """One new token of a request: emit the text that is safe to show, or finish it (EOS, a stop
    text, max_new_tokens, cancelled). Returns whether the request goes on. Shared by the built-in
    engine and the vLLM engine, so both stream and cut replies alike."""
    if s.cancelled.is_set():
        s.sink(Event(done=True, finish_reason="cancelled", prompt_tokens=len(s.prompt_ids),
                     completion_tokens=len(s.ids)))
        return False
    reason = None
    eos = tok in eos_ids and not s.params.ignore_eos
    if eos:
        reason = "stop"
    else:
        s.ids.append(tok)
        detokenize_step(s, tokenizer)
    text = s.text.lstrip()
    cut = min((text.find(st) for st in s.stop_texts if st in text), default=-1)
    if cut >= 0:
        text, reason = text[:cut].rstrip(), "stop"
    elif reason is None and len(s.ids) >= s.params.max_new_tokens:
        reason = "length"
    if reason is not None and cut < 0:  # the end: a trailing incomplete character too, as before
        text = tokenizer.decode(s.ids, skip_special_tokens=True).lstrip()
    if reason is None:
        safe = len(text) - _holdback(text, s.stop_texts)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its next bytes
            safe = min(safe, len(text.rstrip("\ufffd")))
        # trailing spaces may precede a stop string and be cut: hold them back too
        safe = min(safe, len(text[:safe].rstrip()))
        if safe > s.sent:  # with the count so far, so a guard that cuts here knows it
            s.sink(Event(text=text[s.sent:safe], completion_tokens=len(s.ids)))
            s.sent = safe
        return True
    if cut < 0 and reason == "stop":
        text = text.rstrip()
    if len(text) > s.sent:
        s.sink(Event(text=text[s.sent:], completion_tokens=len(s.ids)))
        s.sent = len(text)
    s.sink(Event(done=True, finish_reason=reason, prompt_tokens=len(s.prompt_ids),
                 completion_tokens=len(s.ids) + (1 if eos else 0)))
    return False
