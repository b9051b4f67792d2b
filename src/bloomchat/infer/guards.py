"""Guards for the weaknesses BLOOMChat's card admits, each optional and counted.

- language: a reply that drifts away from the user's language (BLOOMChat sometimes answers a
  Chinese question in English) is detected with py3langid (its model ships in the package) on the
  first PROBE_CHARS characters, held back until then, and resampled with a new seed.
- repetition: a reply whose end is the same unit repeated (a sentence, a word, "!!!!") is cut after
  the first copy, beyond what the repetition penalty prevents. Text, not tokens, so it also
  works on remote engines.
- moderation: a pluggable `check(text) -> category | None` on the user's message (then a plain
  refusal, no generation) and on the reply as it grows (then the reply stops, finish "content_filter").

`GuardSession` is a small state machine fed text pieces; `guarded_events` drives it over any
backend's event stream (local engine or OpenAI client); the server drives it asynchronously.
"""

from __future__ import annotations

import importlib
import random
import re
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

from bloomchat.errors import BloomchatError
from bloomchat.langs import classify
from bloomchat.infer.engine import Event
from bloomchat.infer.params import GenerationParams

#: Characters of reply seen before its language is judged: py3langid is reliable from ~30-40
#: characters of Latin script (a CJK character carries more, so fewer are needed there).
PROBE_CHARS = 40
#: The user's text must be at least this long to have a language worth defending.
MIN_USER_CHARS = 12
#: Detection confidence (normalised probability) below which no drift is declared
#: (py3langid gives plain Chinese sentences ~0.87, so 0.9 would ignore them; scripts decide CJK first).
MIN_CONFIDENCE = 0.8
#: A loop is a unit repeated at least this many times covering at least LOOP_MIN_CHARS characters.
LOOP_MIN_REPEATS = 3
LOOP_MIN_CHARS = 30
LOOP_MAX_PERIOD = 200  # longest repeated unit looked for (a long sentence)

REFUSALS = {
    "en": "I'm sorry, but I can't help with that.",
    "zh": "抱歉，我无法提供这方面的帮助。",
    "fr": "Désolé, je ne peux pas vous aider avec cela.",
    "es": "Lo siento, pero no puedo ayudar con eso.",
    "pt": "Desculpe, mas não posso ajudar com isso.",
    "ar": "عذرًا، لا يمكنني المساعدة في ذلك.",
    "hi": "क्षमा करें, मैं इसमें मदद नहीं कर सकता।",
    "vi": "Xin lỗi, tôi không thể giúp việc đó.",
    "id": "Maaf, saya tidak dapat membantu dengan hal itu.",
    "ja": "申し訳ありませんが、それにはお答えできません。",
    "de": "Tut mir leid, dabei kann ich nicht helfen.",
}


class Moderator(Protocol):
    def __call__(self, text: str) -> str | None:  # a category name when the text is flagged
        ...


#: A deliberately small default: explicit requests for weapons of mass harm, hard drugs synthesis
#: and sexual content involving minors, in the languages BLOOMChat targets. Plug in a real
#: classifier with --moderation module:function for production.
_DEFAULT_PATTERNS: dict[str, list[str]] = {
    "weapons": [
        r"\b(make|build|assemble|construct)\b.{0,30}\b(bomb|explosive|pipe bomb|nerve agent|bioweapon)s?\b",
        r"(制造|制作|自制|组装).{0,6}(炸弹|炸药|爆炸物|神经毒剂|生物武器)",
        r"\b(fabriquer|construire)\b.{0,30}\b(bombe|explosif)s?\b",
        r"\b(fabricar|construir|hacer)\b.{0,30}\b(bomba|explosivo)s?\b",
        r"\b(fazer|fabricar|construir)\b.{0,30}\b(bomba|explosivo)s?\b",
    ],
    "drugs": [
        r"\b(synthesi[sz]e|cook|make)\b.{0,30}\b(meth|methamphetamine|fentanyl|heroin)\b",
        r"(制造|合成|制作).{0,6}(冰毒|甲基苯丙胺|芬太尼|海洛因)",
    ],
    "sexual_minors": [
        r"\b(child|minor|underage)\b.{0,20}\b(porn|sexual|nude)",
        r"(儿童|未成年).{0,6}(色情|裸)",
    ],
}


class KeywordModerator:
    """Regular expressions per category; the default moderation check."""

    def __init__(self, patterns: dict[str, list[str]] | None = None):
        self.patterns = {c: [re.compile(p, re.IGNORECASE | re.DOTALL) for p in ps]
                         for c, ps in (patterns or _DEFAULT_PATTERNS).items()}

    def __call__(self, text: str) -> str | None:
        for cat, pats in self.patterns.items():
            if any(p.search(text) for p in pats):
                return cat
        return None


def load_moderator(spec: str | None) -> Moderator | None:
    """'default' -> KeywordModerator, 'none' -> None, 'pkg.module:name' -> that callable (or class)."""
    if spec in (None, "", "none", "off"):
        return None
    if spec == "default":
        return KeywordModerator()
    mod_name, _, attr = spec.partition(":")
    if not attr:
        raise BloomchatError("moderation must be 'default', 'none' or 'module:callable'", where=f"--moderation {spec}")
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise BloomchatError(f"cannot import moderation check: {e}", where=f"--moderation {spec}") from None
    if isinstance(obj, type):
        obj = obj()
    if not callable(obj):
        raise BloomchatError("moderation check is not callable", where=f"--moderation {spec}")
    return obj


def _script_language(text: str) -> str | None:
    """zh / ja / ko when the letters are mostly of that script: surer than n-grams on short CJK text."""
    han = kana = hangul = letters = 0
    for ch in text:
        o = ord(ch)
        if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF:
            han += 1
        elif 0x3040 <= o <= 0x30FF:
            kana += 1
        elif 0xAC00 <= o <= 0xD7AF:
            hangul += 1
        elif not ch.isalpha():
            continue
        letters += 1
    if not letters:
        return None
    if hangul / letters > 0.3:
        return "ko"
    if kana / letters > 0.1:
        return "ja"
    if han / letters > 0.5:
        return "zh"
    return None


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability): CJK by script, the rest by py3langid (normalised probabilities)."""
    script = _script_language(text)
    if script:
        return script, 1.0
    return classify(text)


_CODE_RE = re.compile(r"```.*?(```|$)|`[^`]*`", re.DOTALL)


def _prose(text: str) -> str:
    """Text without code (code is English-looking in every language)."""
    return _CODE_RE.sub(" ", text).strip()


def find_loop(text: str, *, min_repeats: int = LOOP_MIN_REPEATS, min_chars: int = LOOP_MIN_CHARS,
              max_period: int = LOOP_MAX_PERIOD) -> int | None:
    """Where to cut `text` when it ends in a loop (after the first copy of the unit), else None."""
    n = len(text)
    for p in range(1, min(max_period, n // (min_repeats - 1)) + 1):
        unit = text[n - p:]
        r = 1
        while n - (r + 1) * p >= 0 and text[n - (r + 1) * p: n - r * p] == unit:
            r += 1
        start = n - r * p  # where the run of identical units begins
        cut = start + p  # keep the first copy
        bare = unit.lstrip()  # the first sentence of a run often lacks the space the others start with
        if bare != unit and bare and text[:start].endswith(bare):
            cut, r = start, r + 1
        if r >= min_repeats and r * p >= min_chars:
            return cut
    return None


@dataclass
class GuardConfig:
    language: bool = True
    repetition: bool = True
    moderator: Moderator | None = field(default_factory=KeywordModerator)
    language_retries: int = 2  # resamples before the drifted reply is let through (and counted)


class GuardStats:
    """Thread-safe counters of how often each guard ran and fired."""

    NAMES = ("requests", "language_checked", "language_drift", "language_resampled", "language_unfixed",
             "repetition_cut", "moderation_input_blocked", "moderation_output_blocked")

    def __init__(self):
        self._lock = threading.Lock()
        self._c = dict.fromkeys(self.NAMES, 0)

    def inc(self, name: str, k: int = 1) -> None:
        with self._lock:
            self._c[name] += k

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._c)


class GuardSession:
    """One request: feed pieces, get text to emit and an action (None, "retry" or "stop")."""

    def __init__(self, config: GuardConfig, stats: GuardStats, messages: Sequence[dict]):
        self.config, self.stats = config, stats
        users = [m["content"] for m in messages if m.get("role") == "user"]
        self.user_text = users[-1] if users else ""
        self.user_lang: str | None = None
        prose = _prose(self.user_text)
        if config.language and len(prose) >= MIN_USER_CHARS:
            lang, p = detect_language(prose)
            if p >= MIN_CONFIDENCE:
                self.user_lang = lang
        self.attempt = 0
        self.finish_reason: str | None = None
        self.stats.inc("requests")
        self._reset()

    def _reset(self):
        self.text = ""  # the reply so far in this attempt
        self.generated = 0  # tokens generated so far in this attempt (from the engine's text events)
        self.emitted = 0
        self.lang_ok = self.user_lang is None

    def refusal(self) -> str:
        lang = self.user_lang or (detect_language(self.user_text)[0] if self.user_text.strip() else "en")
        return REFUSALS.get(lang, REFUSALS["en"])

    def check_input(self) -> str | None:
        """The refusal to answer with when the user's message is flagged (nothing is generated)."""
        mod = self.config.moderator
        if mod is not None and self.user_text and mod(self.user_text):
            self.stats.inc("moderation_input_blocked")
            self.finish_reason = "content_filter"
            return self.refusal()
        return None

    def retry_params(self, params: GenerationParams) -> GenerationParams:
        """A new seed (and sampling, if the request was greedy) for the next attempt."""
        self.attempt += 1
        self._reset()
        self.stats.inc("language_resampled")
        seed = (params.seed if params.seed is not None else random.randrange(1 << 30)) + 1000 * self.attempt
        return params.replace(seed=seed, temperature=params.temperature or 0.8)

    def _language(self, final: bool) -> str | None:
        if self.lang_ok:
            return None
        prose = _prose(self.text)
        if len(prose) < PROBE_CHARS and not final:
            return "hold"
        self.lang_ok = True
        if len(prose) < MIN_USER_CHARS // 2:
            return None
        self.stats.inc("language_checked")
        lang, p = detect_language(prose)
        if lang != self.user_lang and p >= MIN_CONFIDENCE:
            self.stats.inc("language_drift")
            if self.attempt < self.config.language_retries:
                return "retry"
            self.stats.inc("language_unfixed")
        return None

    def _release(self) -> str:
        out = self.text[self.emitted:]
        self.emitted = len(self.text)
        return out

    def feed(self, piece: str) -> tuple[str, str | None]:
        self.text += piece
        mod = self.config.moderator
        if mod is not None and mod(self.text):
            self.stats.inc("moderation_output_blocked")
            self.finish_reason = "content_filter"
            self.text = self.text[: self.emitted]
            tail = ("\n\n" if self.emitted else "") + self.refusal()
            self.text += tail
            return self._release(), "stop"
        if self.config.repetition:
            cut = find_loop(self.text)
            if cut is not None:
                self.stats.inc("repetition_cut")
                self.finish_reason = "stop"
                self.text = self.text[:cut].rstrip()  # streamed clients may have seen more
                self.emitted = min(self.emitted, len(self.text))
                return self._release(), "stop"
        if self.config.language:
            verdict = self._language(final=False)
            if verdict == "hold":
                return "", None
            if verdict == "retry":
                return "", "retry"
        return self._release(), None

    def end(self) -> tuple[str, str | None]:
        """At the end of generation: release held text, or ask for a retry."""
        if self.config.language and self._language(final=True) == "retry":
            return "", "retry"
        return self._release(), None

    def on_event(self, ev: Event, prompt_tokens: int | None = None) -> tuple[list[Event], str | None]:
        """Pass one backend event through the guards: the events to hand on, and what to do next
        ("retry": resample, "done": the reply is over, None: keep reading). Shared by the sync
        stream (`guarded_events`) and the server's async one, so both behave the same."""
        out: list[Event] = []
        self.generated = max(self.generated, ev.completion_tokens)
        if ev.text:
            text, action = self.feed(ev.text)
            if text:
                out.append(Event(text=text))
            if action == "retry":
                return out, "retry"
            if action == "stop":
                pt = ev.prompt_tokens if prompt_tokens is None else prompt_tokens
                # usage counts the tokens generated up to the cut (generation stops here)
                out.append(Event(done=True, finish_reason=self.finish_reason, prompt_tokens=pt,
                                 completion_tokens=self.generated, final_text=self.text))
                return out, "done"
        if ev.done:
            text, action = self.end()
            if action == "retry":
                return out, "retry"
            if text:
                out.append(Event(text=text))
            out.append(ev)
            return out, "done"
        return out, None


def guarded_events(start: Callable[[GenerationParams], Iterator[Event]], messages: Sequence[dict],
                   params: GenerationParams, config: GuardConfig, stats: GuardStats) -> Iterator[Event]:
    """Run `start(params)` (a fresh event stream per attempt) under the guards; yields Events.

    Closing the returned iterator closes the current backend stream (which cancels generation).
    """
    session = GuardSession(config, stats, messages)
    refusal = session.check_input()
    if refusal is not None:
        yield Event(text=refusal)
        yield Event(done=True, finish_reason="content_filter")
        return
    while True:
        events = start(params)
        retry = False
        try:
            for ev in events:
                out, next_step = session.on_event(ev)
                yield from out
                if next_step == "done":
                    return
                if next_step == "retry":
                    retry = True
                    break
        finally:
            close = getattr(events, "close", None)
            if close:
                close()
        if retry:
            params = session.retry_params(params)
            continue
        return


class GuardedChat:
    """A backend (ChatModel or OpenAIChatClient) with guards: the same reply/stream/reply_batch API."""

    def __init__(self, backend, config: GuardConfig | None = None, stats: GuardStats | None = None):
        self.backend = backend
        self.config = config or GuardConfig()
        self.stats = stats or GuardStats()
        self.name = getattr(backend, "name", "bloomchat")
        self.last_finish_reason: str | None = None

    def stream_events(self, messages, params: GenerationParams | None = None) -> Iterator[Event]:
        params = (params or GenerationParams()).validate()
        return guarded_events(lambda p: self.backend.stream_events(messages, p), messages, params,
                              self.config, self.stats)

    def stream(self, messages, params: GenerationParams | None = None) -> Iterator[str]:
        for ev in self.stream_events(messages, params):
            if ev.text:
                yield ev.text
            if ev.done:
                self.last_finish_reason = ev.finish_reason

    def reply(self, messages, params: GenerationParams | None = None) -> str:
        parts = []
        for ev in self.stream_events(messages, params):
            if ev.text:
                parts.append(ev.text)
            if ev.done:
                self.last_finish_reason = ev.finish_reason
                if ev.final_text is not None:
                    return ev.final_text
        return "".join(parts)

    def reply_batch(self, batch, params: GenerationParams | None = None, *, progress: bool = False) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        batch = list(batch)
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(batch)))) as ex:  # the engine batches them
            return list(ex.map(lambda m: self.reply(m, params), batch))

    def close(self) -> None:
        self.backend.close()
