"""The one structured form every stage after `prepare` reads: a conversation of human/bot turns.

A prepared file is JSONL, one conversation a line, in a form that is at the same time
BLOOMChat's own training format (`prompt` empty, `completion` the whole text) and structured:

    {"prompt": "", "completion": "<human>: Hi\\n<bot>: Hello!",
     "turns": [{"role": "human", "text": "Hi"}, {"role": "bot", "text": "Hello!"}],
     "source": "dolly", "lang": "en", "id": "dolly-15k.jsonl:1"}

`completion` keeps the text exactly as BLOOMChat's scripts wrote it (OIG text verbatim, even
with `Rosey:` bot tags); `turns` is what tokenisation, evaluation and chat use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bloomchat.chat_format import render_text

Role = Literal["human", "bot"]
ROLES: tuple[str, ...] = ("human", "bot")


@dataclass
class Turn:
    role: Role
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "text": self.text}


@dataclass
class Conversation:
    turns: list[Turn]
    source: str = "unknown"
    lang: str | None = None
    id: str | None = None
    completion: str | None = None  # verbatim BLOOMChat text when it differs from render_text(turns)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The BLOOMChat training text of this conversation."""
        return self.completion if self.completion is not None else render_text(self.turns)

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "prompt": "",
            "completion": self.text,
            "turns": [t.to_dict() for t in self.turns],
            "source": self.source,
            "lang": self.lang,
        }
        if self.id is not None:
            rec["id"] = self.id
        if self.meta:
            rec["meta"] = self.meta
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "Conversation":
        """Read a prepared record; a record with only `completion` is parsed from its text."""
        from bloomchat.chat_format import parse_text

        if not isinstance(rec, dict):
            raise ValueError("record is not a JSON object")
        raw_turns = rec.get("turns")
        if raw_turns is None:
            text = rec.get("completion")
            if not isinstance(text, str):
                raise ValueError("record has neither 'turns' nor a 'completion' string")
            turns = [Turn(t["role"], t["text"]) for t in parse_text(str(rec.get("prompt") or "") + text)]
        else:
            if not isinstance(raw_turns, list):
                raise ValueError("'turns' is not a list")
            turns = []
            for i, t in enumerate(raw_turns):
                if not isinstance(t, dict) or t.get("role") not in ROLES or not isinstance(t.get("text"), str):
                    raise ValueError(f"turns[{i}] must be {{'role': 'human'|'bot', 'text': str}}")
                turns.append(Turn(t["role"], t["text"]))
        completion = rec.get("completion")
        conv = cls(
            turns=turns,
            source=str(rec.get("source") or "unknown"),
            lang=rec.get("lang"),
            id=rec.get("id"),
            meta=rec.get("meta") or {},
        )
        if isinstance(completion, str) and completion != render_text(turns):
            conv.completion = completion
        return conv
