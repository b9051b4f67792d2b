"""Prepared-file lines -> token ids + loss mask, exact for any fast tokenizer.

Each conversation is rendered as one string (the chat template's text, EOS text after every reply)
and tokenised whole; loss flags come from character spans through the offset mapping
(`bloomchat.chat_tokens`, which also builds the engine's prompts: one encoder for both). So the
ids are exactly `tokenizer(text)` / `apply_chat_template`, even for SentencePiece tokenizers whose
dummy "▁" prefix made per-piece tokenisation add a token before every reply.

Work comes in chunks of raw lines and goes back as plain results (never exceptions), so the
main process decides in file order whether a bad line is an error or a counted skip, and the
output does not depend on how many processes did the work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

import numpy as np

from bloomchat.chat_format import _TAG_RE, BOT_ALIASES, BOT_TAG, render_text
from bloomchat.chat_tokens import (Rendered, encode_rendered, render, render_conversation_text,
                                   render_template)
from bloomchat.conversation import Conversation

#: Skip reasons that are counted, never errors.
NO_BOT_TURN = "no_bot_turn"
INVALID = "invalid"


@dataclass
class Encoded:
    """One conversation, tokenised."""

    key: str  # the record's id, or FILE:LINE
    input_ids: np.ndarray  # int32
    loss_mask: np.ndarray  # int8
    source: str
    lang: str | None
    trailing_prompt_tokens: int  # tokens of a final human turn with no reply, left out
    split_key: str = ""  # digest of the tokens: decides the train/dev side (see `content_key`)
    boundary_tokens: int = 0  # loss tokens that also cover prompt characters (chat_tokens' rule)
    changes: tuple[str, ...] = ()  # how the trained text differs from the verbatim one (`text_changes`)


def content_key(input_ids: np.ndarray, loss_mask: np.ndarray) -> str:
    """Digest of what is trained on: identical conversations (OIG unified_basic's 1001 copies, exact
    duplicates kept with --no-dedup) get one key, so they all land on the same side of the split and
    dev never holds a conversation that train also holds."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(input_ids, dtype=np.int32).tobytes())
    h.update(np.ascontiguousarray(loss_mask, dtype=np.int8).tobytes())
    return h.hexdigest()


@dataclass
class Skipped:
    """A line that gives no conversation to train on, and why."""

    reason: str  # NO_BOT_TURN or INVALID
    lineno: int
    message: str
    changes: tuple[str, ...] = ()


#: Reasons the text trained on (parsed turns) differs from a record's verbatim BLOOMChat text.
TEXT_CHANGES = ("text_before_first_tag", "bot_alias_renamed", "no_tag", "no_bot_turn",
                "trailing_human_turn_removed", "whitespace_changed", "other_change")
_ALIAS_LINE_RE = re.compile(r"(^|\n)(?:" + "|".join(re.escape(a) for a in BOT_ALIASES) + ")")
_WS_RE = re.compile(r"\s+")


def text_changes(conv: Conversation) -> tuple[str, ...]:
    """Each way training on `conv.turns` changes what BLOOMChat's scripts trained on (`completion`).

    text_before_first_tag: dropped; bot_alias_renamed: `Rosey:` trained as `<bot>:`; no_tag: an item
    with no tag gives no turns (not trained); no_bot_turn: no reply (not trained);
    trailing_human_turn_removed: an unanswered last question left out; whitespace_changed: turn texts
    stripped (OIG's final newline...); other_change: anything else.
    """
    out: list[str] = []
    text = conv.completion
    if text is not None:
        m = _TAG_RE.search(text)
        if m is None:
            return ("no_tag",)
        if text[:m.start()].strip():
            out.append("text_before_first_tag")
        canonical = text[m.start():]
        if _ALIAS_LINE_RE.search(canonical):
            out.append("bot_alias_renamed")
            canonical = _ALIAS_LINE_RE.sub(lambda a: a.group(1) + BOT_TAG, canonical)
        rendered = render_text(conv.turns)
        if canonical.strip() != rendered:
            same = _WS_RE.sub(" ", canonical).strip() == _WS_RE.sub(" ", rendered).strip()
            out.append("whitespace_changed" if same else "other_change")
        elif canonical != rendered:
            out.append("whitespace_changed")
    roles = [t.role for t in conv.turns]
    if "bot" not in roles:
        out.append("no_bot_turn")
    elif roles[-1] != "bot":
        out.append("trailing_human_turn_removed")
    return tuple(out)


def parse_line(raw: bytes, lineno: int, file_label: str) -> Conversation | Skipped | None:
    """A prepared-file line -> Conversation; blank line -> None; anything else -> Skipped."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Skipped(INVALID, lineno, f"not UTF-8 ({e.reason} at byte {e.start})")
    if lineno == 1:
        text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    if not text.strip():
        return None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        return Skipped(INVALID, lineno, f"not JSON ({e.msg}, column {e.colno})")
    try:
        conv = Conversation.from_record(rec)
    except (ValueError, TypeError, KeyError) as e:
        return Skipped(INVALID, lineno, f"not a prepared record ({e})")
    if conv.id is None:
        conv.id = f"{file_label}:{lineno}"
    return conv


def encode_conversations(convs: list[Conversation], tokenizer, *, chat_format: str = "bloomchat",
                         loss_on: str = "replies") -> list[Encoded | Skipped]:
    """Tokenise conversations in one batched tokenizer call (see `bloomchat.chat_tokens`).

    loss_on="replies": loss on each reply and the EOS after it; conversations with no reply skip.
    loss_on="conversation": BLOOMChat's scripts as they ran: the verbatim text, all tokens with loss,
    one EOS at the end (chat_format="base": the whole template rendering, all tokens with loss).
    """
    items: list[Rendered | None] = []
    changes: list[tuple[str, ...]] = []
    for conv in convs:
        if loss_on == "conversation":
            changes.append(())
            if chat_format == "base":
                items.append(render_template(tokenizer, conv.turns, loss_on=loss_on) if conv.turns else None)
            else:
                text = conv.text
                items.append(render_conversation_text(text, tokenizer.eos_token) if text.strip() else None)
            continue
        changes.append(text_changes(conv))
        if not any(t.role == "bot" for t in conv.turns):
            items.append(None)
        else:
            items.append(render(tokenizer, conv.turns, chat_format=chat_format, loss_on=loss_on))
    encoded = iter(encode_rendered(tokenizer, [r for r in items if r is not None]))
    out: list[Encoded | Skipped] = []
    for conv, item, ch in zip(convs, items, changes):
        if item is None:
            out.append(Skipped(NO_BOT_TURN, -1, "no bot turn" if loss_on == "replies" else "empty text",
                               changes=ch))
            continue
        tm = next(encoded)
        out.append(Encoded(
            key=str(conv.id),
            input_ids=tm.ids,
            loss_mask=tm.mask,
            source=conv.source,
            lang=conv.lang,
            trailing_prompt_tokens=tm.cut_tokens,
            split_key=content_key(tm.ids, tm.mask),
            boundary_tokens=tm.boundary_tokens,
            changes=ch,
        ))
    return out


def encode_lines(lines: list[tuple[int, bytes]], file_label: str, tokenizer, *, chat_format: str = "bloomchat",
                 loss_on: str = "replies") -> list[Encoded | Skipped]:
    """Parse and tokenise a chunk of (line number, raw bytes); results keep line order."""
    results: list[Encoded | Skipped | None] = []
    convs: list[tuple[int, int, Conversation]] = []  # (position in results, line number, conv)
    for lineno, raw in lines:
        parsed = parse_line(raw, lineno, file_label)
        if isinstance(parsed, Conversation):
            convs.append((len(results), lineno, parsed))
            results.append(None)
        elif parsed is not None:
            results.append(parsed)
    encoded = encode_conversations([c for _, _, c in convs], tokenizer, chat_format=chat_format, loss_on=loss_on)
    for (pos, lineno, _), enc in zip(convs, encoded):
        if isinstance(enc, Skipped):
            enc.lineno = lineno
        results[pos] = enc
    return [r for r in results if r is not None]


# --- worker-process side -------------------------------------------------------------------
_WORKER_TOKENIZER = None


def init_worker(tokenizer) -> None:
    """Pool initializer: keep the (pickled once) tokenizer; no nested Rust thread pools."""
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOKENIZER = tokenizer


def worker_encode(lines: list[tuple[int, bytes]], file_label: str, chat_format: str = "bloomchat",
                  loss_on: str = "replies") -> list[Encoded | Skipped]:
    return encode_lines(lines, file_label, _WORKER_TOKENIZER, chat_format=chat_format, loss_on=loss_on)
