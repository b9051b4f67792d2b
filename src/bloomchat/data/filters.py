"""Conversation filters, each switchable, each with its own reason name in the counts.

Reasons, in the order they are checked (a conversation counts once, under its first reason):
`empty_turn`, `turn_too_long`, `not_alternating` (two turns of one role in a row, or a bot turn
first), `not_ending_with_bot` (also a text with no turns at all), `duplicate` (same text as an
earlier kept conversation).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bloomchat.conversation import Conversation

#: 2048-token training sequences x ~4 characters per BLOOM token in English = 8192 characters:
#: a longer turn cannot fit one sequence whole.
MAX_TURN_CHARS = 4 * 2048

REASONS = ("empty_turn", "turn_too_long", "not_alternating", "not_ending_with_bot", "duplicate")


@dataclass
class FilterConfig:
    dedup: bool = True
    empty_turns: bool = True
    max_turn_chars: int | None = MAX_TURN_CHARS  # None: no length limit
    alternation: bool = True
    bot_last: bool = True

    @classmethod
    def off(cls) -> "FilterConfig":
        """Every filter off: the output is exactly what BLOOMChat's scripts wrote."""
        return cls(dedup=False, empty_turns=False, max_turn_chars=None, alternation=False, bot_last=False)


class Filters:
    """Stateful (duplicates): one instance per `prepare` run, shared by all its input files.

    Duplicates are remembered as 8-byte BLAKE2 digests held as Python ints (~70 bytes each with
    the set's overhead): 2.5 M OIG conversations ~ 175 MB. A collision between two different
    texts has probability ~n^2 / 2^65, about 2e-7 for 2.5 M conversations.
    """

    def __init__(self, config: FilterConfig):
        self.config = config
        self._seen: set[int] = set()

    def reason(self, conv: Conversation) -> str | None:
        c = self.config
        turns = conv.turns
        if c.empty_turns and any(not t.text.strip() for t in turns):
            return "empty_turn"
        if c.max_turn_chars is not None and any(len(t.text) > c.max_turn_chars for t in turns):
            return "turn_too_long"
        if c.alternation and any(t.role != ("human" if i % 2 == 0 else "bot") for i, t in enumerate(turns)):
            return "not_alternating"
        if c.bot_last and (not turns or turns[-1].role != "bot"):
            return "not_ending_with_bot"
        if c.dedup:
            key = int.from_bytes(hashlib.blake2b(conv.text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
            if key in self._seen:
                return "duplicate"
            self._seen.add(key)
        return None
