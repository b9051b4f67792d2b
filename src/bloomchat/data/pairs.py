"""Preference pairs: a prompt (the conversation so far, ending with a human turn) and two replies
to it, the one people preferred (`chosen`) and the other (`rejected`).

A prepared-pairs file is JSONL, one pair a line (`bloomchat prepare-pairs` writes it, the
preference stage of a recipe reads it, `arena.pairs.export_pairs` writes it from votes):

    {"prompt": [{"role": "human", "text": "Hi"}], "chosen": "Hello! How can I help?",
     "rejected": "What.", "lang": "en", "source": "oasst1", "id": "oasst1:<chosen>><rejected>",
     "meta": {"chosen_rank": 0, "rejected_rank": 2}}

Each side is trained as its own conversation: prompt turns + one bot turn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from bloomchat.conversation import ROLES, Turn

#: Pair filter reasons, in the order they are checked (a pair counts once, under its first).
PAIR_REASONS = ("empty_turn", "turn_too_long", "not_alternating", "same_reply", "duplicate")


@dataclass
class Pair:
    prompt: list[Turn]
    chosen: str
    rejected: str
    source: str
    lang: str | None = None
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    lines: tuple[int, ...] = ()  # input lines the pair was built from (accounting; not written)

    def conversation(self, side: str) -> list[Turn]:
        """The prompt turns and the `side` ("chosen" | "rejected") reply as a bot turn."""
        return [*self.prompt, Turn("bot", self.chosen if side == "chosen" else self.rejected)]

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"prompt": [t.to_dict() for t in self.prompt], "chosen": self.chosen,
                               "rejected": self.rejected, "lang": self.lang, "source": self.source}
        if self.id is not None:
            rec["id"] = self.id
        if self.meta:
            rec["meta"] = self.meta
        return rec

    @classmethod
    def from_record(cls, rec: Any) -> "Pair":
        """A prepared-pairs line; ValueError naming the field when it is not one."""
        if not isinstance(rec, dict):
            raise ValueError("record is not a JSON object")
        turns = rec.get("prompt")
        if not isinstance(turns, list) or not turns:
            raise ValueError("'prompt' must be a non-empty list of turns")
        prompt = []
        for i, t in enumerate(turns):
            if not isinstance(t, dict) or t.get("role") not in ROLES or not isinstance(t.get("text"), str):
                raise ValueError(f"prompt[{i}] must be {{'role': 'human'|'bot', 'text': str}}")
            prompt.append(Turn(t["role"], t["text"]))
        for k in ("chosen", "rejected"):
            if not isinstance(rec.get(k), str):
                raise ValueError(f"'{k}' must be a string")
        lang = rec.get("lang")
        meta = rec.get("meta") or {}
        return cls(prompt, rec["chosen"], rec["rejected"], source=str(rec.get("source") or "unknown"),
                   lang=lang if isinstance(lang, str) else None, id=rec.get("id"),
                   meta=meta if isinstance(meta, dict) else {})


class PairFilters:
    """The prepare filters, for pairs (see PAIR_REASONS); one instance per run (duplicates)."""

    def __init__(self, *, dedup: bool = True, max_turn_chars: int | None = None):
        self.dedup, self.max_turn_chars = dedup, max_turn_chars
        self._seen: set[bytes] = set()

    def reason(self, p: Pair) -> str | None:
        texts = [t.text for t in p.prompt] + [p.chosen, p.rejected]
        if any(not x.strip() for x in texts):
            return "empty_turn"
        if self.max_turn_chars is not None and any(len(x) > self.max_turn_chars for x in texts):
            return "turn_too_long"
        if any(t.role != ("human" if i % 2 == 0 else "bot") for i, t in enumerate(p.prompt)) or \
                p.prompt[-1].role != "human":
            return "not_alternating"
        if p.chosen.strip() == p.rejected.strip():
            return "same_reply"
        if self.dedup:
            h = hashlib.blake2b(digest_size=12)
            for x in texts:
                h.update(x.encode("utf-8", "surrogatepass") + b"\x00")
            key = h.digest()
            if key in self._seen:
                return "duplicate"
            self._seen.add(key)
        return None
