"""The BLOOMChat text format, in one place: training text, generation prompt, HF chat template.

    <human>: first question
    <bot>: first answer</s>
    <human>: follow-up
    <bot>:                      <- generation prompt ends here; the model writes " answer</s>"

`</s>` is the tokenizer's EOS token: training puts it after every reply (loss on it, so the model
learns to stop) and CHAT_TEMPLATE renders it there too, so an engine that only knows the template
gives the ids training saw. `render_text` is the text without EOS (BLOOMChat's own, as its data
files hold it); `bloomchat.chat_tokens` renders and tokenises with EOS, for pack and chat alike.

Loss spans are exact by construction, never found again by searching for tags in token ids:

    "<human>: first question\\n<bot>:"   loss 0
    " first answer</s>"                  loss 1
    "\\n<human>: follow-up\\n<bot>:"      loss 0
    " answer</s>"                        loss 1
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

HUMAN_TAG = "<human>:"
BOT_TAG = "<bot>:"
#: Other names some OIG files give the bot (e.g. unified_joke_explanations uses "Rosey:").
BOT_ALIASES: tuple[str, ...] = ("Rosey:",)

#: Jinja chat template stored in tokenizer_config.json, so transformers, vLLM and TGI render
#: exactly what bloomchat trains on: the EOS token (`eos_token`, parsed as the special token
#: when tokenised) closes every assistant message, as the packer writes it in training. A system
#: message, if any, is a plain first line.
#:
#:     <human>: q\n<bot>: a</s>\n<human>: q2\n<bot>:
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ '<human>: ' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '<bot>: ' + message['content'] + eos_token }}"
    "{%- elif message['role'] == 'system' -%}{{ message['content'] }}"
    "{%- else -%}{{ raise_exception('BLOOMChat format knows roles system, user and assistant, not ' + message['role']) }}"
    "{%- endif -%}"
    "{%- if not loop.last -%}{{ '\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\\n<bot>:' }}{%- endif -%}"
)

#: The template bloomchat saved before EOS was rendered after assistant messages (models saved
#: then still carry it): the same format, so ChatModel still builds their prompts itself.
LEGACY_CHAT_TEMPLATES: tuple[str, ...] = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ '<human>: ' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '<bot>: ' + message['content'] }}"
    "{%- elif message['role'] == 'system' -%}{{ message['content'] }}"
    "{%- else -%}{{ raise_exception('BLOOMChat format knows roles system, user and assistant, not ' + message['role']) }}"
    "{%- endif -%}"
    "{%- if not loop.last -%}{{ '\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\\n<bot>:' }}{%- endif -%}",
)


def is_bloomchat_template(template: str | None) -> bool:
    """True for a tokenizer whose prompts bloomchat builds itself: no template, or a BLOOMChat one."""
    return template is None or template == CHAT_TEMPLATE or template in LEGACY_CHAT_TEMPLATES


_ROLE_TAG = {"human": HUMAN_TAG, "bot": BOT_TAG}
_OPENAI_ROLE = {"user": "human", "assistant": "bot", "human": "human", "bot": "bot"}


@dataclass(frozen=True)
class Segment:
    """A piece of training text; `loss` is True exactly for a bot reply (its EOS follows it)."""

    text: str
    loss: bool


def _pairs(turns: Iterable) -> list[tuple[str, str]]:
    out = []
    for t in turns:
        role = getattr(t, "role", None) or t["role"]
        text = getattr(t, "text", None)
        if text is None:
            text = t.get("text", t.get("content"))
        role = _OPENAI_ROLE.get(role, role)
        if role not in _ROLE_TAG:
            raise ValueError(f"unknown role {role!r}")
        out.append((role, text))
    return out


def render_text(turns: Iterable) -> str:
    """BLOOMChat training text: `<human>: ...\\n<bot>: ...` joined by newlines."""
    return "\n".join(f"{_ROLE_TAG[r]} {t}" for r, t in _pairs(turns))


def render_prompt(turns: Sequence, eos: str = "") -> str:
    """Generation prompt: the history, then `\\n<bot>:` (or just `<bot>:` with no history).

    With `eos` (the tokenizer's EOS text) after each bot reply it is CHAT_TEMPLATE's rendering.
    """
    history = "\n".join(f"{_ROLE_TAG[r]} {t}{eos if r == 'bot' else ''}" for r, t in _pairs(turns))
    return f"{history}\n{BOT_TAG}" if history else BOT_TAG


def segments(turns: Iterable) -> list[Segment]:
    """Cut a conversation into loss-free prompt segments and loss-bearing bot replies.

    Concatenating the segment texts gives `render_text(turns)` exactly. Do not tokenise the
    segments one by one (a SentencePiece tokenizer adds a "▁" before each): `chat_tokens` tokenises
    the whole text and maps these spans through offsets.
    """
    segs: list[Segment] = []
    pending = ""
    for i, (role, text) in enumerate(_pairs(turns)):
        sep = "\n" if i else ""
        if role == "human":
            pending += f"{sep}{HUMAN_TAG} {text}"
        else:
            pending += f"{sep}{BOT_TAG}"
            segs.append(Segment(pending, False))
            segs.append(Segment(f" {text}", True))
            pending = ""
    if pending:
        segs.append(Segment(pending, False))
    return segs


_TAG_RE = re.compile(r"(?:^|\n)(<human>:|<bot>:|" + "|".join(re.escape(a) for a in BOT_ALIASES) + r")")


def parse_text(text: str, bot_aliases: Sequence[str] = BOT_ALIASES) -> list[dict[str, str]]:
    """Split BLOOMChat text into turns ({'role','text'}); `Rosey:` and other aliases are bot turns.

    Text before the first tag is ignored; a text with no tag gives no turns.
    """
    aliases = set(bot_aliases)
    parts = _TAG_RE.split(text)
    turns: list[dict[str, str]] = []
    for i in range(1, len(parts), 2):
        tag, body = parts[i], parts[i + 1]
        role = "human" if tag == HUMAN_TAG else "bot" if (tag == BOT_TAG or tag in aliases) else None
        if role is None:  # an alias the caller did not accept: keep it as text of the previous turn
            if turns:
                turns[-1]["text"] += "\n" + tag + body
            continue
        turns.append({"role": role, "text": body.strip()})
    return turns


def to_turns(messages: Iterable[dict]) -> list[dict[str, str]]:
    """OpenAI-style messages (user/assistant) to bloomchat turns (human/bot)."""
    return [{"role": r, "text": t} for r, t in _pairs(messages)]
