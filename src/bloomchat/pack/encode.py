"""Prepared-file lines -> token ids + loss mask, exactly from the turn spans of `segments()`.

The loss mask is never found again by looking for `<bot>:` in token ids: each segment of
`chat_format.segments` is tokenised on its own (no special tokens), so a token's loss flag is
the flag of the segment it came from. Reply segments get loss 1 and are followed by the
tokenizer's EOS, also loss 1; so an EOS closes every reply and separates conversations.

Work comes in chunks of raw lines and goes back as plain results (never exceptions), so the
main process decides in file order whether a bad line is an error or a counted skip, and the
output does not depend on how many processes did the work.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from bloomchat.chat_format import segments
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


def encode_conversations(convs: list[Conversation], tokenizer) -> list[Encoded | Skipped]:
    """Tokenise conversations in one batched tokenizer call; conversations with no reply skip."""
    eos = tokenizer.eos_token_id
    texts: list[str] = []
    plans: list[list[tuple[int, bool]] | None] = []
    for conv in convs:
        segs = segments(conv.turns)
        if not any(s.loss for s in segs):
            plans.append(None)
            continue
        plan = []
        for s in segs:
            plan.append((len(texts), s.loss))
            texts.append(s.text)
        plans.append(plan)
    ids_list = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"] if texts else []
    out: list[Encoded | Skipped] = []
    for conv, plan in zip(convs, plans):
        if plan is None:
            out.append(Skipped(NO_BOT_TURN, -1, "no bot turn"))
            continue
        # Drop a final prompt segment that no reply follows: it has no loss and nothing after it.
        trailing = 0
        if not plan[-1][1]:
            trailing = len(ids_list[plan[-1][0]])
            plan = plan[:-1]
        ids: list[int] = []
        mask: list[int] = []
        for idx, loss in plan:
            seg_ids = ids_list[idx]
            ids.extend(seg_ids)
            mask.extend([1 if loss else 0] * len(seg_ids))
            if loss:
                ids.append(eos)
                mask.append(1)
        ids_arr, mask_arr = np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=np.int8)
        out.append(Encoded(
            key=str(conv.id),
            input_ids=ids_arr,
            loss_mask=mask_arr,
            source=conv.source,
            lang=conv.lang,
            trailing_prompt_tokens=trailing,
            split_key=content_key(ids_arr, mask_arr),
        ))
    return out


def encode_lines(lines: list[tuple[int, bytes]], file_label: str, tokenizer) -> list[Encoded | Skipped]:
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
    encoded = encode_conversations([c for _, _, c in convs], tokenizer)
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


def worker_encode(lines: list[tuple[int, bytes]], file_label: str) -> list[Encoded | Skipped]:
    return encode_lines(lines, file_label, _WORKER_TOKENIZER)
