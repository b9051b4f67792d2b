"""One encoder for training ids, loss masks and generation prompts, exact for any fast tokenizer.

The whole conversation is rendered as ONE string (the text the chat template renders, the EOS
token's text after every reply) and tokenised in one call, so the ids are exactly what
`tokenizer(text)` and `tokenizer.apply_chat_template(...)` give, whatever the tokenizer does at
piece boundaries (SentencePiece's dummy "▁" prefix, merges across a tag). Loss flags come from
character spans of the rendered text through the tokenizer's offset mapping:

    <human>: q\\n<bot>: a</s>\\n<human>: q2\\n<bot>: b</s>
                   [-------]                     [-------]     loss spans: " a</s>", " b</s>"

Boundary rule (the same as transformers' `return_assistant_tokens_mask`): a token has loss when
any character it covers lies in a loss span; a token covering no character (a prepended "▁") takes
the flag of the character at its start. A token that covers characters on both sides of a span
edge (e.g. ":▁a" of a tokenizer that merges across "<bot>:" and the reply) therefore gets loss and is
counted as a boundary token; on byte-level BPE (BLOOM, SmolLM2) and Metaspace tokenizers the
pre-tokenizer splits before the space, so there are none.

Two chat formats:
- `bloomchat`: `chat_format.CHAT_TEMPLATE` rendered in Python (`render_bloomchat`), identical to
  the Jinja template (tested), fast enough for packing.
- `base`: the tokenizer's own chat template (e.g. SmolLM2's ChatML). The assistant spans are found
  by rendering prefixes of the conversation and checking that each is a prefix of the whole
  (`render_template`); a template that is not prefix-stable is an error, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from bloomchat.chat_format import BOT_TAG, HUMAN_TAG, is_bloomchat_template
from bloomchat.errors import BloomchatError

CHAT_FORMATS = ("bloomchat", "base")
LOSS_ON = ("replies", "conversation")
_ROLE = {"user": "user", "human": "user", "assistant": "assistant", "bot": "assistant", "system": "system"}


@dataclass
class Rendered:
    """A conversation as text: `spans` are the [start, end) characters with loss; `eos_spans` the
    characters of EOS texts that must come out as the EOS token; `cut` where the trained part ends
    (text after it is an unanswered prompt, tokenised for exactness and then left out)."""

    text: str
    spans: list[tuple[int, int]] = field(default_factory=list)
    eos_spans: list[tuple[int, int]] = field(default_factory=list)
    cut: int | None = None


def messages_of(turns: Iterable) -> list[dict[str, str]]:
    """Turns ({'role': human|bot, 'text'}) or OpenAI messages -> [{'role': user|assistant|system, 'content'}]."""
    out = []
    for t in turns:
        role = getattr(t, "role", None) or t["role"]
        text = getattr(t, "text", None)
        if text is None:
            text = t.get("content", t.get("text")) if isinstance(t, dict) else None
        if role not in _ROLE:
            raise ValueError(f"unknown role {role!r}")
        out.append({"role": _ROLE[role], "content": text})
    return out


def _last_assistant(msgs: Sequence[dict]) -> int:
    return max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)


# ---------------------------------------------------------------- rendering
def render_bloomchat(turns: Iterable, eos_text: str, *, generation_prompt: bool = False,
                     loss_on: str = "replies") -> Rendered:
    """CHAT_TEMPLATE's text, with loss spans: each reply's " text" and the EOS text after it.

    loss_on="replies": messages after the last reply are rendered but lie past `cut`.
    """
    msgs = messages_of(turns)
    last = _last_assistant(msgs)
    parts: list[str] = []
    pos = 0
    r = Rendered("")
    for i, m in enumerate(msgs):
        if i:
            parts.append("\n")
            pos += 1
        if m["role"] == "user":
            piece = f"{HUMAN_TAG} {m['content']}"
        elif m["role"] == "system":
            piece = m["content"]
        else:
            start = pos + len(BOT_TAG)  # the reply's leading space is part of the reply
            piece = f"{BOT_TAG} {m['content']}{eos_text}"
            end = pos + len(piece)
            r.spans.append((start, end))
            r.eos_spans.append((end - len(eos_text), end))
        parts.append(piece)
        pos += len(piece)
        if i == last:
            r.cut = pos
    if generation_prompt:
        parts.append(f"\n{BOT_TAG}")
    r.text = "".join(parts)
    if loss_on == "conversation":
        r.spans, r.cut = [(0, len(r.text))], None
    return r


def render_conversation_text(text: str, eos_text: str) -> Rendered:
    """BLOOMChat's scripts as they ran: the verbatim text, every token with loss, one EOS at the end."""
    full = text + eos_text
    return Rendered(full, [(0, len(full))], [(len(text), len(full))])


def _apply(tokenizer, msgs, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)


def check_base_template(tokenizer) -> None:
    """chat_format="base" needs the tokenizer's own chat template (not one bloomchat gave it)."""
    tpl = getattr(tokenizer, "chat_template", None)
    name = getattr(tokenizer, "name_or_path", "tokenizer")
    if not tpl or is_bloomchat_template(tpl):
        raise BloomchatError("chat_format 'base' trains in the tokenizer's own chat template, but this tokenizer has "
                             "none of its own (only BLOOMChat's); use chat_format 'bloomchat'", where=str(name))


def render_template(tokenizer, turns: Iterable, *, loss_on: str = "replies") -> Rendered:
    """The tokenizer's chat template; loss spans = each assistant message as the template writes it.

    Span of assistant message k: from the end of render(messages[:k], generation prompt) to the end
    of render(messages[:k+1]), both checked to be prefixes of the whole rendering; the span ends
    after the last EOS text in it (ChatML's "<|im_end|>", not the "\\n" of template glue after it),
    or, with no EOS text in it, after its last non-space character.
    """
    msgs = messages_of(turns)
    name = getattr(tokenizer, "name_or_path", "tokenizer")
    try:
        full = _apply(tokenizer, msgs, False)
    except Exception as e:  # jinja raise_exception, TemplateError ...: the user's template refuses
        raise BloomchatError(f"the tokenizer's chat template cannot render this conversation: {e}",
                             where=str(name)) from None
    if loss_on == "conversation":
        return Rendered(full, [(0, len(full))])
    eos = tokenizer.eos_token or ""
    r = Rendered(full)
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        try:
            before = _apply(tokenizer, msgs[:k], True) if k else _apply(tokenizer, [], True)
            upto = _apply(tokenizer, msgs[: k + 1], False)
        except Exception as e:
            raise BloomchatError(f"the tokenizer's chat template cannot render a prefix of a conversation "
                                 f"(messages[:{k + 1}]): {e}", where=str(name)) from None
        if not (full.startswith(upto) and upto.startswith(before) and len(upto) > len(before)):
            raise BloomchatError(
                f"the tokenizer's chat template is not prefix-stable: rendering the first {k + 1} messages "
                "is not a prefix of rendering the whole conversation (templates that rewrite earlier turns, "
                "e.g. drop reasoning, cannot give exact loss spans); use chat_format 'bloomchat'",
                where=str(name))
        a, b = len(before), len(upto)
        j = full.rfind(eos, a, b) if eos else -1
        end = j + len(eos) if j >= 0 else a + len(full[a:b].rstrip())
        r.spans.append((a, max(end, a)))
        r.cut = end
    return r


def render(tokenizer, turns: Iterable, *, chat_format: str = "bloomchat", loss_on: str = "replies") -> Rendered:
    if chat_format == "base":
        return render_template(tokenizer, turns, loss_on=loss_on)
    return render_bloomchat(turns, tokenizer.eos_token or "", loss_on=loss_on)


# ---------------------------------------------------------------- tokenising
def check_tokenizer(tokenizer) -> None:
    """Offsets need a fast (Rust) tokenizer, and the EOS text must read back as the EOS token."""
    name = getattr(tokenizer, "name_or_path", "tokenizer")
    if not getattr(tokenizer, "is_fast", False):
        raise BloomchatError("exact loss masks need a fast (tokenizers-backed) tokenizer with offset mapping; "
                             f"{type(tokenizer).__name__} is not one", where=str(name))
    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if eos is None or eos_id is None:
        raise BloomchatError("tokenizer has no EOS token (needed after every reply)", where=str(name))
    ids = tokenizer("a" + eos + "\nb", add_special_tokens=False)["input_ids"]
    if ids.count(eos_id) != 1:
        raise BloomchatError(f"tokenizer does not read its EOS text {eos!r} inside a text as the EOS token "
                             f"(id {eos_id}); chat templates rendering it would give other ids", where=str(name))


@dataclass
class TokenMask:
    ids: np.ndarray  # int32
    mask: np.ndarray  # int8
    boundary_tokens: int  # tokens with loss that also cover characters outside the loss spans
    cut_tokens: int  # tokens after `cut`, left out of ids/mask


def mask_from_offsets(offsets: np.ndarray, spans: Sequence[tuple[int, int]], n_chars: int) -> tuple[np.ndarray, int]:
    """Loss flag per token from its [start, end) characters: any character in a span (see module doc)."""
    char = np.zeros(n_chars + 1, dtype=np.int32)
    for a, b in spans:
        char[a:b] = 1
    cs = np.concatenate([[0], np.cumsum(char)])
    s, e = offsets[:, 0], offsets[:, 1]
    covered = cs[e] - cs[s]
    width = e - s
    mask = np.where(width > 0, covered > 0, char[np.minimum(s, n_chars)] > 0)
    boundary = int(np.count_nonzero((covered > 0) & (covered < width)))
    return mask.astype(np.int8), boundary


def encode_rendered(tokenizer, items: Sequence[Rendered]) -> list[TokenMask]:
    """Tokenise rendered conversations in one batched call; ids and loss masks from the offsets."""
    if not items:
        return []
    enc = tokenizer([r.text for r in items], add_special_tokens=False, return_offsets_mapping=True,
                    return_attention_mask=False)
    eos_id = tokenizer.eos_token_id
    out = []
    for r, ids, offs in zip(items, enc["input_ids"], enc["offset_mapping"]):
        ids_arr = np.asarray(ids, dtype=np.int32)
        off = np.asarray(offs, dtype=np.int64).reshape(-1, 2)
        mask, boundary = mask_from_offsets(off, r.spans, len(r.text))
        if r.eos_spans:
            _check_eos(tokenizer, ids_arr, off, r.eos_spans, eos_id)
        n = len(ids_arr)
        keep = n if r.cut is None else int(np.searchsorted(off[:, 0], r.cut, side="left"))
        out.append(TokenMask(ids_arr[:keep], mask[:keep], boundary, n - keep))
    return out


def _check_eos(tokenizer, ids: np.ndarray, off: np.ndarray, eos_spans, eos_id: int) -> None:
    starts = off[:, 0]
    for a, b in eos_spans:
        i = int(np.searchsorted(starts, a, side="right")) - 1  # the token covering character a
        if i < 0 or ids[i] != eos_id or off[i, 1] < b:
            raise BloomchatError(
                f"tokenizer did not read the EOS text {tokenizer.eos_token!r} after a reply as the EOS token "
                f"(id {eos_id}); its training ids would differ from what its chat template gives",
                where=str(getattr(tokenizer, "name_or_path", "tokenizer")))


# ---------------------------------------------------------------- generation prompts
def bloomchat_prompt_text(messages: Sequence[dict], eos_text: str) -> str:
    """CHAT_TEMPLATE with add_generation_prompt=True, rendered in Python."""
    return render_bloomchat(messages, eos_text, generation_prompt=True).text


def prompt_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Generation-prompt ids: exactly `apply_chat_template(messages, add_generation_prompt=True)`, and
    a prefix of the ids the packer trained on for the same conversation (a BLOOMChat tokenizer:
    no template, the current or a legacy one, is rendered here, EOS after every earlier reply)."""
    if not is_bloomchat_template(getattr(tokenizer, "chat_template", None)):
        ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    text = bloomchat_prompt_text(messages, tokenizer.eos_token or "")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
