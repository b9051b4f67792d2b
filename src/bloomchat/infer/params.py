"""Sampling parameters, with BLOOMChat's published defaults and one place that checks them.

BLOOMChat's model card: temperature 0.8, top_p 0.9, repetition penalty 1.2, 512 new tokens; it
sampled through transformers' `generate`, which also keeps only the 50 most likely tokens (top_k
50, generate's default), so top_k defaults to 50 here too (0 turns it off).
temperature 0 means greedy decoding (argmax), as in the OpenAI API.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from bloomchat.errors import BloomchatError

#: Upper bounds that reject absurd requests before they reach the model.
MAX_TEMPERATURE = 2.0  # the OpenAI API's own bound
MAX_REPETITION_PENALTY = 10.0  # 1.2 is BLOOMChat's; beyond 10 every seen token is effectively banned
MAX_STOP_STRINGS = 4  # the OpenAI API's own bound
MAX_NEW_TOKENS_LIMIT = 1 << 20  # a sanity cap; the real cap is the model's context (checked per prompt)
MAX_TOP_K = 1 << 20  # beyond any vocabulary (BLOOM's is 250,880); 0 = off


#: Bumped whenever the engine's sampler (bloomchat.infer.engine) would draw other tokens for the
#: same seed; results that record it (eval's resume key) then refuse to mix old and new draws.
#: 2: inverse-CDF draws replaced torch.multinomial.
#: 3: top_k (default 50, as transformers' generate) and no repetition penalty on special tokens.
SAMPLING_VERSION = 3


@dataclass(frozen=True)
class GenerationParams:
    """How to sample one reply; `validate()` raises BloomchatError naming the bad field."""

    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 50  # transformers' generate default, which BLOOMChat sampled with; 0 = off
    repetition_penalty: float = 1.2
    max_new_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False  # vLLM's extension: go on past EOS (benchmarks that need fixed-length replies)

    def validate(self, where: str = "generation params") -> "GenerationParams":
        def bad(name: str, why: str):
            raise BloomchatError(f"{name} {why} (got {getattr(self, name)!r})", where=where)

        for name in ("temperature", "top_p", "repetition_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                bad(name, "must be a number")
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            bad("temperature", f"must be between 0 and {MAX_TEMPERATURE}")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", "must be in (0, 1]")
        if not 0.0 < self.repetition_penalty <= MAX_REPETITION_PENALTY:
            bad("repetition_penalty", f"must be in (0, {MAX_REPETITION_PENALTY}]")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 0 <= self.top_k <= MAX_TOP_K:
            bad("top_k", f"must be an integer from 0 (off) to {MAX_TOP_K}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            bad("max_new_tokens", "must be an integer")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            bad("max_new_tokens", "must be at least 1")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            bad("seed", "must be an integer or None")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            bad("stop", "must be a tuple of non-empty strings")
        if len(self.stop) > MAX_STOP_STRINGS:
            bad("stop", f"may hold at most {MAX_STOP_STRINGS} strings")
        if not isinstance(self.ignore_eos, bool):
            bad("ignore_eos", "must be true or false")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes) -> "GenerationParams":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_setting(self, name: str, value: str) -> "GenerationParams":
        """Parse one `name value` pair typed by a user (terminal `/set`), then validate."""
        if name not in self.field_names():
            raise BloomchatError(f"unknown parameter {name!r}; known: {', '.join(self.field_names())}")
        try:
            if name in ("max_new_tokens", "top_k"):
                parsed = int(value)
            elif name == "seed":
                parsed = None if value.lower() in ("none", "") else int(value)
            elif name == "stop":
                parsed = tuple(s for s in value.split("|") if s)
            elif name == "ignore_eos":
                parsed = {"true": True, "on": True, "1": True, "false": False, "off": False, "0": False}[value.lower()]
            else:
                parsed = float(value)
        except (ValueError, KeyError):
            raise BloomchatError(f"{name}: cannot read {value!r} as a value") from None
        return self.replace(**{name: parsed}).validate(where=f"/set {name}")
