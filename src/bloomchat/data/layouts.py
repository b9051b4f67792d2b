"""The layouts of users' own conversation data, recognised per record by its keys.

| layout            | keys                                                         |
|-------------------|--------------------------------------------------------------|
| OpenAI messages   | `messages: [{role: system|user|assistant, content}]`         |
| ShareGPT          | `conversations: [{from: human|gpt|system, value}]` (also `conversation: [{role, content}]`, e.g. vigogne) |
| prompt/completion | `prompt`, `completion` (BLOOMChat's own: prompt "" and the tagged text in completion) |
| BLOOMChat / OIG text | `text` with `<human>:` / `<bot>:` tags                    |
| Alpaca            | `instruction`, `input`, `output`, optional `history: [[user, bot]...]` (LLaMA-Factory); an `output` list (ranked replies) uses its first, preferred reply |
| Dolly             | `instruction`, `context`, `response`                         |

A system message has no place in BLOOMChat's two roles: it is put in front of the first human
turn, on its own line (where the HF chat template would render it). A record's own `lang`
(string) is kept.
"""

from __future__ import annotations

from typing import Any

from bloomchat.chat_format import parse_text, render_text
from bloomchat.conversation import Turn


class LayoutError(ValueError):
    """A record that does not fit its layout; the message is the reject reason ("kind: detail")."""


#: Role names seen in public chat data, lower-cased, mapped to BLOOMChat roles.
ROLE_NAMES = {
    "user": "human", "human": "human", "prompter": "human", "utilisateur": "human", "usuario": "human",
    "assistant": "bot", "gpt": "bot", "bot": "bot", "chatgpt": "bot", "model": "bot", "bing": "bot", "bard": "bot",
    "system": "system",
}

LAYOUTS = "messages, conversations (ShareGPT), prompt/completion, text, instruction/input/output (Alpaca), instruction/context/response (Dolly)"


def _content(v: Any, where: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list):  # OpenAI content parts: [{"type": "text", "text": ...}]
        parts = []
        for i, p in enumerate(v):
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            else:
                raise LayoutError(f"wrong type: {where}[{i}] is not a text part")
        return "".join(parts)
    raise LayoutError(f"wrong type: {where} is {type(v).__name__}, expected string")


def _role_list(items: Any, field: str, role_key: str, text_key: str) -> list[Turn]:
    if not isinstance(items, list):
        raise LayoutError(f"wrong type: '{field}' is not a list")
    turns: list[Turn] = []
    system: list[str] = []
    for i, m in enumerate(items):
        if not isinstance(m, dict):
            raise LayoutError(f"wrong type: {field}[{i}] is not an object")
        if role_key not in m:
            raise LayoutError(f"missing field: {field}[{i}].{role_key}")
        if text_key not in m:
            raise LayoutError(f"missing field: {field}[{i}].{text_key}")
        name = m[role_key]
        role = ROLE_NAMES.get(name.lower()) if isinstance(name, str) else None
        if role is None:
            raise LayoutError(f"wrong value: {field}[{i}].{role_key} is {name!r}")
        text = _content(m[text_key], f"{field}[{i}].{text_key}")
        if role == "system":
            system.append(text.strip())
            continue
        if system and role == "human" and not any(t.role == "human" for t in turns):
            text = "\n".join(system + [text.strip()])
            system = []
        turns.append(Turn(role, text.strip()))
    return turns


def _alpaca(v: dict) -> list[Turn]:
    history = v.get("history") or []
    if not isinstance(history, list):
        raise LayoutError("wrong type: 'history' is not a list")
    turns: list[Turn] = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise LayoutError(f"wrong type: history[{i}] must be [user, assistant] strings")
        turns += [Turn("human", pair[0].strip()), Turn("bot", pair[1].strip())]
    instruction, inp, out = v.get("instruction"), v.get("input", ""), v.get("output")
    if isinstance(out, list) and out:
        out = out[0]
    for name, x in (("instruction", instruction), ("input", inp), ("output", out)):
        if not isinstance(x, str) and not (name == "input" and x is None):
            raise LayoutError(f"wrong type: '{name}' is {type(x).__name__}, expected string")
    human = f"{instruction}\n{inp}" if inp else instruction
    return turns + [Turn("human", human.strip()), Turn("bot", out.strip())]


def dolly_turns(instruction: str, context: str, response: str) -> tuple[list[Turn], str]:
    """Dolly record -> (stripped turns, BLOOMChat text)."""
    if context == "":
        text = f"<human>: {instruction}\n<bot>: {response}"
        human = instruction
    else:
        text = f"<human>: {instruction}\n{context}\n<bot>: {response}"
        human = f"{instruction}\n{context}"
    return [Turn("human", human.strip()), Turn("bot", response.strip())], text


def user_record_to_turns(v: Any) -> tuple[list[Turn], str | None, str | None]:
    """(turns, verbatim BLOOMChat text or None, lang or None) of one user record."""
    if not isinstance(v, dict):
        raise LayoutError(f"wrong layout: record is a JSON {type(v).__name__}, expected an object")
    lang = v.get("lang") if isinstance(v.get("lang"), str) and v.get("lang") else None
    completion = None
    if "messages" in v:
        turns = _role_list(v["messages"], "messages", "role", "content")
    elif "conversations" in v:
        items = v["conversations"]
        keys = ("from", "value") if not items or not isinstance(items[0], dict) or "from" in items[0] else ("role", "content")
        turns = _role_list(items, "conversations", *keys)
    elif "conversation" in v:
        turns = _role_list(v["conversation"], "conversation", "role", "content")
    elif "completion" in v:
        prompt, comp = v.get("prompt", ""), v["completion"]
        if not isinstance(comp, str):
            raise LayoutError("wrong type: 'completion' is not a string")
        if prompt is None:
            prompt = ""
        if not isinstance(prompt, str):
            raise LayoutError("wrong type: 'prompt' is not a string")
        full = prompt + comp
        if "<human>:" in full:  # BLOOMChat text (prompt "" and the whole conversation in completion)
            turns = [Turn(t["role"], t["text"]) for t in parse_text(full.strip())]
            completion = full
        else:
            turns = [Turn("human", prompt.strip()), Turn("bot", comp.strip())]
    elif "text" in v:
        if not isinstance(v["text"], str):
            raise LayoutError("wrong type: 'text' is not a string")
        turns = [Turn(t["role"], t["text"]) for t in parse_text(v["text"].strip())]
        completion = v["text"].strip()
    elif "instruction" in v and "output" in v:
        turns = _alpaca(v)
    elif "instruction" in v and "response" in v:
        for k in ("instruction", "response"):
            if not isinstance(v[k], str):
                raise LayoutError(f"wrong type: '{k}' is not a string")
        ctx = v.get("context") or ""
        if not isinstance(ctx, str):
            raise LayoutError("wrong type: 'context' is not a string")
        turns, completion = dolly_turns(v["instruction"], ctx, v["response"])
    else:
        raise LayoutError(f"wrong layout: keys {sorted(v)[:8]} match none of: {LAYOUTS}")
    if completion is not None and completion == render_text(turns):
        completion = None
    return turns, completion, lang
