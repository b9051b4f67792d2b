"""Read prompt sets in the layouts found in the wild into one form: `PromptItem`.

Layouts (detected per file, see each loader):

* bloomchat arena jsonl (documented here, the one to write by hand):
  `{"id": "7", "lang": "zh", "prompt": "你好", "category": "greeting"}` or, for a conversation,
  `{"id": "8", "lang": "zh", "turns": [{"role": "human", "text": "..."}, {"role": "bot", "text": "..."},
  {"role": "human", "text": "..."}]}`. A bloomchat prepared file (conversation.py) also works: its
  trailing bot turn is dropped and the rest is the prompt.
* Vicuna/FastChat `{"question_id", "text", "category"[, "lang"]}` (vicuna80_12lang, BayLing-80 single
  turn, LLM Zoo questions-*.jsonl) and `{"question_id", "category", "turns": [str]}` (ja-vicuna80).
* LLM Zoo `{"id", "label", "query"}` (`{ar,de,...,zh}100.jsonl`).
* Bare JSON strings in language blocks (Open-Assistant multilingual-60.jsonl).
* Alpaca JSON arrays `[{"instruction", "input", "output", "history"}]` (LLaMA-Factory); when
  `output` is a ranked list its replies can come in as systems `<prefix>-rank1`, `-rank2`, ...

Language: the record's `lang`, else `--lang`, else the file name (questions_Chinese, zh100, *.zh.jsonl,
questions-zh, or its folder's last token as in belle_eval_set_zh/; `bloomchat.langs.lang_from_path`),
else detected with py3langid over the whole file.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bloomchat.errors import BloomchatError
from bloomchat.langs import OASST_MULTILINGUAL60_LANGS, identifier, lang_from_path

_LANG_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")


class UnsupportedLayout(BloomchatError):
    """A file bloomchat recognises but cannot use (skipped when a whole folder is imported)."""


@dataclass
class PromptItem:
    key: str  # unique across the arena: "<set>/<lang>/<id>"
    lang: str
    set_name: str
    turns: list[dict[str, str]]  # human/bot turns, the last one human
    category: str | None = None
    replies: dict[str, str] = field(default_factory=dict)  # system -> reply (ranked alpaca files)


def check_lang(lang: str, where: str) -> str:
    lang = str(lang).strip()
    if not _LANG_CODE.match(lang):
        raise BloomchatError(f"language {lang!r} is not a code like 'zh' or 'pt-BR'", where=where)
    return lang


def detect_lang(texts: list[str], where: str) -> str:
    """Majority language of the texts (py3langid, every language it knows)."""
    votes = Counter(identifier().classify(t)[0] for t in texts if t.strip())
    if not votes:
        raise BloomchatError("cannot tell the language of empty prompts: pass --lang", where=where)
    return votes.most_common(1)[0][0]


def default_set_name(path: Path) -> str:
    """`eval_prompts_vicuna80_12lang/questions_Chinese.jsonl` -> `vicuna80_12lang`; a lone file -> its stem."""
    parent = path.parent.name
    if parent.startswith("eval_prompts_"):
        return parent[len("eval_prompts_"):]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise BloomchatError(f"not JSON: {e.msg}", where=f"{path}:{n}") from None
    return rows


def _turns_from_record(rec: dict, where: str) -> tuple[str, list[dict[str, str]], str | None]:
    """(local id, turns, category) of one JSONL record in any of the object layouts."""
    category = rec.get("category") or rec.get("label") or rec.get("class")
    rid = rec.get("id", rec.get("question_id"))
    if isinstance(rec.get("turns"), list) and rec["turns"] and all(isinstance(t, str) for t in rec["turns"]):
        if len(rec["turns"]) > 1:
            raise UnsupportedLayout(
                "multi-turn prompt whose later questions follow the model's own replies; "
                "the arena compares one reply per prompt (use the single-turn file)", where=where)
        turns = [{"role": "human", "text": rec["turns"][0]}]
    elif "turns" in rec or "completion" in rec and not rec.get("prompt"):
        from bloomchat.conversation import Conversation

        try:
            conv = Conversation.from_record(rec)
        except ValueError as e:
            raise BloomchatError(str(e), where=where) from None
        turns = [t.to_dict() for t in conv.turns]
        while turns and turns[-1]["role"] == "bot":
            turns.pop()
        rid = rid if rid is not None else conv.id
    else:
        text = next((rec[k] for k in ("prompt", "text", "query", "question", "instruction") if k in rec), None)
        if isinstance(text, list):
            raise UnsupportedLayout(
                "multi-turn prompt whose later questions follow the model's own replies; "
                "the arena compares one reply per prompt (use the single-turn file)", where=where)
        if not isinstance(text, str):
            raise BloomchatError(
                "no prompt text: expected a 'prompt', 'text', 'query' string or a 'turns' list", where=where)
        turns = [{"role": "human", "text": text}]
    if not turns or turns[-1]["role"] != "human" or not turns[-1]["text"].strip():
        raise BloomchatError("the prompt must end with a non-empty human turn", where=where)
    # No id (BELLE eval_set.json): the caller numbers the record by its line, stable for one file.
    return (str(rid) if rid is not None else None), turns, (str(category) if category is not None else None)


def load_prompt_file(
    path: str | Path,
    *,
    lang: str | None = None,
    set_name: str | None = None,
    ranked_prefix: str | None = None,
    ranked_top: int | None = None,
    lang_blocks: list[str] | None = None,
) -> list[PromptItem]:
    """All prompts of one file; raises BloomchatError naming file:line and field on bad input."""
    path = Path(path)
    if not path.is_file():
        raise BloomchatError("no such file", where=str(path))
    set_name = set_name or default_set_name(path)
    if lang:
        lang = check_lang(lang, "--lang")
    head = path.open(encoding="utf-8").read(4096).lstrip()
    if head.startswith("["):
        return _load_alpaca(path, lang, set_name, ranked_prefix, ranked_top)
    rows = _read_jsonl(path)
    if not rows:
        raise BloomchatError("file holds no prompts", where=str(path))
    if all(isinstance(r, str) for _, r in rows):
        return _load_string_blocks(path, rows, lang, set_name, lang_blocks)
    file_lang = lang or lang_from_path(path)
    parsed = []
    for n, rec in rows:
        where = f"{path}:{n}"
        if not isinstance(rec, dict):
            raise BloomchatError("line is not a JSON object", where=where)
        rid, turns, cat = _turns_from_record(rec, where)
        rec_lang = rec.get("lang")
        parsed.append((where, rid, turns, cat, check_lang(rec_lang, where + " lang") if rec_lang else None))
    missing = [p[0] for p in parsed if p[1] is None]
    if missing and len(missing) < len(parsed):
        raise BloomchatError("no 'id' (or 'question_id') field, while other records have one", where=missing[0])
    if missing:  # no record has an id (BELLE eval_set.json): number them by line, stable for one file
        parsed = [(w, w.rsplit(":", 1)[1], *rest) for w, _rid, *rest in parsed]
    if file_lang is None and any(p[4] is None for p in parsed):
        file_lang = detect_lang([p[2][-1]["text"] for p in parsed], str(path))
    items = []
    for where, rid, turns, cat, rec_lang in parsed:
        lg = lang or rec_lang or file_lang
        items.append(PromptItem(f"{set_name}/{lg}/{rid}", lg, set_name, turns, cat))
    _check_unique(items, path)
    return items


def _load_string_blocks(path, rows, lang, set_name, lang_blocks) -> list[PromptItem]:
    if lang:
        blocks = [lang]
    elif lang_blocks:
        blocks = [check_lang(x, "--lang-blocks") for x in lang_blocks]
    elif path.name == "multilingual-60.jsonl":
        blocks = list(OASST_MULTILINGUAL60_LANGS)  # 12 blocks of the same 5 prompts
    else:
        raise BloomchatError(
            "lines are bare strings: pass --lang, or --lang-blocks en,es,... when the file holds "
            "equal blocks of the same prompts in several languages", where=str(path))
    if len(rows) % len(blocks):
        raise BloomchatError(
            f"{len(rows)} lines do not split into {len(blocks)} equal language blocks", where=str(path))
    size = len(rows) // len(blocks)
    items = []
    for i, (n, text) in enumerate(rows):
        if not text.strip():
            raise BloomchatError("empty prompt", where=f"{path}:{n}")
        lg = blocks[i // size]
        items.append(PromptItem(f"{set_name}/{lg}/{i % size + 1}", lg, set_name, [{"role": "human", "text": text}]))
    return items


def _load_alpaca(path, lang, set_name, ranked_prefix, ranked_top=None) -> list[PromptItem]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BloomchatError(f"not JSON: {e.msg} (line {e.lineno})", where=str(path)) from None
    if not isinstance(data, list):
        raise BloomchatError("expected a JSON array of alpaca records", where=str(path))
    turns_list = []
    for i, rec in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(rec, dict) or not isinstance(rec.get("instruction"), str):
            raise BloomchatError("record has no 'instruction' string", where=where)
        turns = []
        for j, pair in enumerate(rec.get("history") or []):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise BloomchatError(f"history[{j}] is not a [user, assistant] pair", where=where)
            turns += [{"role": "human", "text": pair[0]}, {"role": "bot", "text": pair[1]}]
        text = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
        turns.append({"role": "human", "text": text})
        turns_list.append(turns)
    lang = lang or lang_from_path(path) or detect_lang([t[-1]["text"] for t in turns_list], str(path))
    items = []
    for i, (rec, turns) in enumerate(zip(data, turns_list)):
        item = PromptItem(f"{set_name}/{lang}/{i + 1}", lang, set_name, turns)
        if ranked_prefix:
            out = rec.get("output")
            outs = (out if isinstance(out, list) else [out])[:ranked_top]
            for r, reply in enumerate(outs, 1):
                if not isinstance(reply, str) or not reply.strip():
                    raise BloomchatError(f"output[{r - 1}] is not a non-empty string", where=f"{path}[{i}]")
                item.replies[f"{ranked_prefix}-rank{r}"] = reply
        items.append(item)
    return items


def _check_unique(items: list[PromptItem], path: Path) -> None:
    seen = Counter(i.key for i in items)
    dup = [k for k, c in seen.items() if c > 1]
    if dup:
        raise BloomchatError(f"prompt id {dup[0]!r} appears more than once", where=str(path))


def prompt_files(path: str | Path) -> list[Path]:
    """A file, or every .jsonl/.json file of a folder (sorted)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".jsonl", ".json") and f.is_file())
        if not files:
            raise BloomchatError("folder holds no .jsonl or .json file", where=str(p))
        return files
    if not p.exists():
        raise BloomchatError("no such file or folder", where=str(p))
    return [p]
