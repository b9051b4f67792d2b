"""Readers: raw files -> `Conversation`s, with BLOOMChat's exact rules per source.

    from bloomchat.data import iter_oig, iter_dolly, iter_oasst1, iter_user_jsonl
    for conv in iter_dolly("databricks-dolly-15k.jsonl"): ...

Each public `iter_*` streams conversations; the `read_*` twins also yield how many input lines
each conversation was built from, and record every line in a `Ledger` (read / rejected / left
out by a rule), which is how `prepare` proves that nothing is lost.

Rules (BLOOMChat data_prep/, sambanova/bloomchat):
- OIG: the first `per_source` items of each file (skipped items count), items whose
  metadata source is `prosocial` skipped, completion = text.strip() + "\\n" (kept verbatim, even
  with `Rosey:` bot tags, unless `normalize_tags`), `unified_basic` repeated (see OIG_BASIC_COPIES).
- Dolly: `<human>: {instruction}\\n{context}\\n<bot>: {response}`, no context line when context == "".
- OASST1: from each root prompt, step to the child with the best (+1 minus -1) emoji count, first
  in file order on ties, until a leaf; "\\n<human>: ..." / "\\n<bot>: ..." joined, then stripped.

Structured turns are always stripped; `completion` keeps the BLOOMChat text when it differs.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bloomchat.chat_format import BOT_ALIASES, BOT_TAG, parse_text
from bloomchat.conversation import Conversation, Turn
from bloomchat.data.layouts import LayoutError, dolly_turns, user_record_to_turns
from bloomchat.data.ledger import Ledger
from bloomchat.data.records import Raw, open_records
from bloomchat.errors import BloomchatError

#: BLOOMChat appended each unified_basic item once plus 1000 more times ("mk sure basic
#: instructions ocasionally appear"): 1 + 1000 = 1001 copies in total.
OIG_BASIC_COPIES = 1 + 1000
#: OIG files whose items get OIG_BASIC_COPIES copies (BLOOMChat: data_path == 'unified_basic.jsonl').
OIG_BASIC_STEMS = ("unified_basic",)
#: OIG metadata sources BLOOMChat skipped ("prosocial sometimes produce unsafe answers").
OIG_SKIP_SOURCES = ("prosocial",)
#: Where an OIG item's source is looked up for `skip_sources`. BLOOMChat's script reads only
#: `meta` (sambanova/bloomchat data_prep/subsample_openchatkit.py@7399370, lines 62-64:
#: `if "meta" in item: if item["meta"]["source"] == "prosocial": continue`), while OIG's files
#: carry `metadata`, so its skip never fires on them; "meta_or_metadata" skips what it meant to.
PROSOCIAL_CHECKS = ("meta_or_metadata", "meta")
#: BLOOMChat's per-file cap is named "100K_each" (bloom_ock_100K_each.jsonl).
OIG_PER_SOURCE = 100_000

_ALIAS_RE = re.compile(r"(^|\n)(" + "|".join(re.escape(a) for a in BOT_ALIASES) + r")")


def file_stem(path: Path) -> str:
    name = Path(path).name
    for suf in (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet", ".ndjson"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def oig_copies(path: Path) -> int:
    """How many times each kept item of this OIG file is written (1001 for unified_basic)."""
    return OIG_BASIC_COPIES if file_stem(path) in OIG_BASIC_STEMS else 1


def _records(path: Path, kind: str, ledger: Ledger, limit: int | None = None) -> Iterator[Raw]:
    """Valid JSON records of a file; blank lines noted, unreadable lines rejected (all counted)."""
    path = Path(path)
    key = str(path)
    stats = ledger.file(key, kind)
    it = open_records(path)
    n = 0
    for raw in it:
        if raw.error == "blank":
            ledger.blank(key)
            continue
        if limit is not None and n >= limit:
            stats.stopped_after = n
            break
        n += 1
        ledger.read(key)
        if raw.error is not None:
            ledger.reject(key, raw.line, raw.error)
            continue
        yield raw


def _str_field(value: dict, name: str, *, optional: bool = False) -> str | None:
    if name not in value or value[name] is None:
        if optional:
            return None
        raise LayoutError(f"missing field: '{name}'")
    v = value[name]
    if not isinstance(v, str):
        raise LayoutError(f"wrong type: '{name}' is {type(v).__name__}, expected string")
    return v


def _require_object(raw: Raw) -> dict:
    if not isinstance(raw.value, dict):
        raise LayoutError(f"wrong layout: line is a JSON {type(raw.value).__name__}, expected an object")
    return raw.value


# ---------------------------------------------------------------- OIG


def read_oig(
    path: Path,
    ledger: Ledger,
    *,
    per_source: int = OIG_PER_SOURCE,
    normalize_tags: bool = False,
    skip_sources: tuple[str, ...] = OIG_SKIP_SOURCES,
    prosocial_check: str = "meta_or_metadata",
    would_skip: Counter | None = None,
) -> Iterator[tuple[Conversation, int]]:
    """OIG `unified_*.jsonl[.gz]` lines `{"text": ..., "metadata": {"source": ...}}`.

    `prosocial_check` (PROSOCIAL_CHECKS) picks the field whose `source` is tested against
    `skip_sources`; `would_skip`, when given, counts per check how many items it would skip,
    whichever one is in force.
    """
    path = Path(path)
    key, stem = str(path), file_stem(path)
    for raw in _records(path, "oig", ledger, limit=per_source):
        try:
            value = _require_object(raw)
            text = _str_field(value, "text")
            for name in ("metadata", "meta"):
                if value.get(name) is not None and not isinstance(value[name], dict):
                    raise LayoutError(f"wrong type: '{name}' is not an object")
        except LayoutError as e:
            ledger.reject(key, raw.line, str(e), raw.value)
            continue
        sources = {
            "meta_or_metadata": (value.get("metadata", value.get("meta")) or {}).get("source"),
            "meta": (value.get("meta") or {}).get("source"),
        }
        if would_skip is not None:
            for check, s in sources.items():
                would_skip[check] += s in skip_sources
        src = sources[prosocial_check]
        if src in skip_sources:
            ledger.drop(key, str(src))
            continue
        completion = text.strip() + "\n"
        if normalize_tags:
            completion = _ALIAS_RE.sub(lambda m: m.group(1) + BOT_TAG, completion)
        turns = [Turn(t["role"], t["text"]) for t in parse_text(completion)]
        yield Conversation(turns, source=f"oig/{stem}", id=f"{path.name}:{raw.line}", completion=completion), 1


def iter_oig(path: Path, **kw: Any) -> Iterator[Conversation]:
    """Stream the conversations of one OIG file (one copy each; `prepare` applies unified_basic copies)."""
    for conv, _ in read_oig(path, Ledger(), **kw):
        yield conv


# ---------------------------------------------------------------- Dolly


def read_dolly(path: Path, ledger: Ledger) -> Iterator[tuple[Conversation, int]]:
    """Dolly-15k lines with `instruction`, `context`, `response` (strings) and optional `category`."""
    path = Path(path)
    key = str(path)
    for raw in _records(path, "dolly", ledger):
        try:
            value = _require_object(raw)
            instruction = _str_field(value, "instruction")
            context = _str_field(value, "context", optional=True) or ""
            response = _str_field(value, "response")
        except LayoutError as e:
            ledger.reject(key, raw.line, str(e), raw.value)
            continue
        turns, text = dolly_turns(instruction, context, response)
        meta = {"category": value["category"]} if isinstance(value.get("category"), str) else {}
        yield Conversation(turns, source="dolly", id=f"{path.name}:{raw.line}", completion=text, meta=meta), 1


def iter_dolly(path: Path) -> Iterator[Conversation]:
    for conv, _ in read_dolly(path, Ledger()):
        yield conv


# ---------------------------------------------------------------- OASST1

_OASST_ROLE = {"prompter": "human", "assistant": "bot"}


def emoji_score(emojis: Any) -> int:
    """BLOOMChat's reply score: count of "+1" minus count of "-1"; 0 without emojis."""
    if not emojis:
        return 0
    names, counts = emojis.get("name") or [], emojis.get("count") or []
    score = 0
    if "+1" in names:
        score += counts[names.index("+1")]
    if "-1" in names:
        score -= counts[names.index("-1")]
    return score


def _check_message(m: Any, where: str) -> None:
    if not isinstance(m, dict):
        raise LayoutError(f"wrong type: {where} is not an object")
    if m.get("role") not in _OASST_ROLE:
        raise LayoutError(f"wrong value: {where}role is {m.get('role')!r}, expected 'prompter' or 'assistant'")
    if not isinstance(m.get("text"), str):
        raise LayoutError(f"{'missing field' if 'text' not in m else 'wrong type'}: {where}text")
    em = m.get("emojis")
    if em is not None and not (
        isinstance(em, dict)
        and isinstance(em.get("name"), list)
        and isinstance(em.get("count"), list)
        and len(em["name"]) == len(em["count"])
        and all(isinstance(c, int) for c in em["count"])
    ):
        raise LayoutError(f"wrong type: {where}emojis must be {{'name': [...], 'count': [int...]}} or null")


def _oasst_conversation(path_msgs: list[dict], *, cid: str) -> Conversation:
    text = ""
    for m in path_msgs:
        text += f"\n{'<bot>' if m['role'] == 'assistant' else '<human>'}: {m['text']}"
    text = text.strip()
    turns = [Turn(_OASST_ROLE[m["role"]], m["text"].strip()) for m in path_msgs]
    lang = path_msgs[0].get("lang") if isinstance(path_msgs[0].get("lang"), str) else None
    return Conversation(turns, source="oasst1", lang=lang, id=cid, completion=text)


@dataclass
class _Msg:
    line: int
    parent: str | None
    role: str
    text: str
    lang: str | None
    score: int
    children: list[str] = field(default_factory=list)
    tree: str | None = None


#: Filter reason of OASST1 messages whose tree is not in `trees` (another split).
OASST_OTHER_SPLIT = "oasst_other_split"


def read_tree_ids(path: Path) -> frozenset[str]:
    """The OASST1 message trees of one split: every `message_tree_id` of a .jsonl/.json/.parquet
    file (such as Hugging Face's OpenAssistant/oasst1 `data/train-*.parquet`), or, for a .txt
    file, one tree id a line."""
    path = Path(path)
    if not path.is_file():
        raise BloomchatError("tree-id file not found", where=str(path))
    if path.name.lower().endswith(".txt"):
        ids = {ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()}
    else:
        ids = set()
        for raw in open_records(path):
            v = raw.value
            if isinstance(v, dict) and isinstance(v.get("message_tree_id"), str):
                ids.add(v["message_tree_id"])
    if not ids:
        raise BloomchatError("no OASST1 tree id in this file (expected message_tree_id fields, or a .txt "
                             "with one id a line)", where=str(path))
    return frozenset(ids)


def read_oasst1(
    path: Path, ledger: Ledger, *, trees: frozenset[str] | None = None, split_counts: Counter | None = None
) -> Iterator[tuple[Conversation, int]]:
    """OASST1 message-level export (one message a line) or tree export (one tree a line).

    The layout is decided by the first readable record. The message-level export is held in
    memory as a tree (message ids, roles, texts, scores: what the best path needs). With `trees`
    (see `read_tree_ids`), messages of any other tree are left out as OASST_OTHER_SPLIT;
    `split_counts` then counts trees_kept / trees_dropped.
    """
    path = Path(path)
    key = str(path)
    records = _records(path, "oasst1", ledger)
    first = None
    for raw in records:
        if isinstance(raw.value, dict) and ("message_id" in raw.value or "prompt" in raw.value):
            first = raw
            break
        ledger.reject(key, raw.line, "wrong layout: expected an OASST1 message (message_id, parent_id, role, text) or tree (prompt with replies)", raw.value)
    if first is None:
        return

    def rest() -> Iterator[Raw]:
        yield first
        yield from records

    counts = split_counts if split_counts is not None else Counter()
    if "message_id" in first.value:
        yield from _oasst_messages(path, ledger, rest(), trees, counts)
    else:
        yield from _oasst_trees(path, ledger, rest(), trees, counts)


def _oasst_messages(
    path: Path, ledger: Ledger, records: Iterator[Raw], trees: frozenset[str] | None, counts: Counter
) -> Iterator[tuple[Conversation, int]]:
    key = str(path)
    msgs: dict[str, _Msg] = {}
    for raw in records:
        try:
            v = _require_object(raw)
            mid = v.get("message_id")
            if not isinstance(mid, str):
                raise LayoutError("missing field: 'message_id'" if mid is None else "wrong type: 'message_id'")
            parent = v.get("parent_id")
            if parent is not None and not isinstance(parent, str):
                raise LayoutError("wrong type: 'parent_id' must be a string or null")
            _check_message(v, "")
            if mid in msgs:
                raise LayoutError(f"duplicate message_id: {mid} (first on line {msgs[mid].line})")
        except LayoutError as e:
            ledger.reject(key, raw.line, str(e), raw.value)
            continue
        tree = v.get("message_tree_id") if isinstance(v.get("message_tree_id"), str) else None
        if trees is not None and tree is not None and tree not in trees:
            ledger.drop(key, OASST_OTHER_SPLIT)
            if v.get("parent_id") is None:
                counts["trees_dropped"] += 1
            continue
        lang = v.get("lang") if isinstance(v.get("lang"), str) else None
        msgs[mid] = _Msg(raw.line, parent, v["role"], v["text"], lang, emoji_score(v.get("emojis")), tree=tree)
    # children in file order (BLOOMChat appends child ids while walking the messages in order)
    for mid, m in msgs.items():
        if m.parent is not None and m.parent in msgs:
            msgs[m.parent].children.append(mid)
    # messages cut off from every root: an absent parent, reported with what they hang from
    for mid, m in msgs.items():
        if m.parent is None:
            continue
        if m.parent not in msgs:
            ledger.reject(key, m.line, f"orphan: parent_id {m.parent} is not in the file", None)
            stack = list(m.children)
            while stack:
                c = stack.pop()
                ledger.reject(key, msgs[c].line, f"orphan_descendant: under message {mid} whose parent {m.parent} is not in the file")
                stack.extend(msgs[c].children)
    # messages whose parent_id chain loops (a -> b -> a) reach neither a root nor an orphan
    reached: set[str] = set()
    stack = [mid for mid, m in msgs.items() if m.parent is None or m.parent not in msgs]
    while stack:
        c = stack.pop()
        reached.add(c)
        stack.extend(msgs[c].children)
    for mid, m in msgs.items():
        if mid not in reached:
            ledger.reject(key, m.line, f"cycle: the parent_id chain from message {mid} loops and never reaches a root")
    for mid, m in msgs.items():
        if m.parent is not None:
            continue
        path_ids = [mid]
        node = m
        while node.children:
            best = max(node.children, key=lambda c: msgs[c].score)  # max() keeps the first on ties
            path_ids.append(best)
            node = msgs[best]
        on_path = set(path_ids)
        stack = [c for c in m.children]
        off = 0
        while stack:
            c = stack.pop()
            if c not in on_path:
                off += 1
            stack.extend(msgs[c].children)
        if trees is not None and (m.tree or mid) not in trees:  # no message_tree_id: the root's id is the tree's
            ledger.drop(key, OASST_OTHER_SPLIT, off + len(path_ids))
            counts["trees_dropped"] += 1
            continue
        if off:
            ledger.drop(key, "oasst_other_branch", off)
        if trees is not None:
            counts["trees_kept"] += 1
        conv = _oasst_conversation(
            [{"role": msgs[i].role, "text": msgs[i].text, "lang": msgs[i].lang} for i in path_ids],
            cid=f"oasst1:{mid}",
        )
        yield conv, len(path_ids)


def _oasst_trees(
    path: Path, ledger: Ledger, records: Iterator[Raw], trees: frozenset[str] | None, counts: Counter
) -> Iterator[tuple[Conversation, int]]:
    key = str(path)
    for raw in records:
        if trees is not None and isinstance(raw.value, dict):
            v = raw.value
            root = v.get("prompt") if isinstance(v.get("prompt"), dict) else {}
            tid = v.get("message_tree_id") or root.get("message_id")
            if tid not in trees:
                ledger.drop(key, OASST_OTHER_SPLIT)
                counts["trees_dropped"] += 1
                continue
            counts["trees_kept"] += 1
        try:
            v = _require_object(raw)
            root = v.get("prompt")
            if root is None:
                raise LayoutError("missing field: 'prompt' (OASST1 tree export)")
            _check_message(root, "prompt.")
            node, where, path_msgs = root, "prompt.", [root]
            while True:
                replies = node.get("replies") or []
                if not isinstance(replies, list):
                    raise LayoutError(f"wrong type: {where}replies is not a list")
                if not replies:
                    break
                for i, r in enumerate(replies):
                    _check_message(r, f"{where}replies[{i}].")
                i = max(range(len(replies)), key=lambda j: emoji_score(replies[j].get("emojis")))
                node, where = replies[i], f"{where}replies[{i}]."
                path_msgs.append(node)
        except LayoutError as e:
            ledger.reject(key, raw.line, str(e), None)
            continue
        tid = v.get("message_tree_id") or root.get("message_id") or f"{path.name}:{raw.line}"
        yield _oasst_conversation(path_msgs, cid=f"oasst1:{tid}"), 1


def iter_oasst1(path: Path) -> Iterator[Conversation]:
    for conv, _ in read_oasst1(path, Ledger()):
        yield conv


# ---------------------------------------------------------------- users' own data


def read_user_jsonl(path: Path, ledger: Ledger) -> Iterator[tuple[Conversation, int]]:
    """The user's own data, layout decided per line: see `bloomchat.data.layouts`."""
    path = Path(path)
    key, stem = str(path), file_stem(path)
    for raw in _records(path, "jsonl", ledger):
        try:
            turns, completion, lang = user_record_to_turns(raw.value)
        except LayoutError as e:
            ledger.reject(key, raw.line, str(e), raw.value)
            continue
        rid = raw.value.get("id") if isinstance(raw.value, dict) else None
        cid = f"{path.name}:{raw.line}" if not isinstance(rid, (str, int)) else f"{path.name}:{rid}"
        yield Conversation(turns, source=f"user/{stem}", lang=lang, id=cid, completion=completion), 1


def iter_user_jsonl(path: Path) -> Iterator[Conversation]:
    for conv, _ in read_user_jsonl(path, Ledger()):
        yield conv


READERS = {"oig": read_oig, "dolly": read_dolly, "oasst1": read_oasst1, "jsonl": read_user_jsonl}


def no_usable_line(path: Path, kind: str, rejects: Path | None = None) -> BloomchatError:
    why = f"see {rejects} for why" if rejects is not None else "see the rejects file for why"
    return BloomchatError(
        f"no usable line in this {kind} file: it is empty or every line was rejected ({why})",
        where=str(path),
    )
