"""Readers of preference data: raw files -> `Group`s of `Pair`s, every line accounted for.

A group is one unit of input whose lines are decided together: one line of a user's file (one
pair, or several from a ranked list), or one OASST1 message tree (its pairs share the prompt
messages). `prepare_pairs` keeps a line when a kept pair uses it, and otherwise counts it under
the filter that dropped its pairs or the reason the reader gives (`Group.unused`).

OASST1 (message-level export, one message a line, the Hugging Face `OpenAssistant/oasst1` rows):
the assistant replies to one prompter message are ranked by the crowd (`rank`, 0 = best). The
best reply is paired with each worse one (`pairing="best_vs_rest"`, the default: every ranked
reply is used once, and every pair has the crowd's favourite as chosen) or with the worst one
only (`"best_vs_worst"`: one pair per ranking, the clearest preference). The prompt is the
message path from the root, so pairs come from every depth of a tree and in every language of
the export. Deleted messages and those that failed review are left out with what hangs below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bloomchat.conversation import Turn
from bloomchat.data.layouts import LayoutError, _alpaca, _role_list
from bloomchat.data.ledger import Ledger
from bloomchat.data.pairs import Pair
from bloomchat.data.readers import _records, _reject_unreachable, _require_object, file_stem

PAIRINGS = ("best_vs_rest", "best_vs_worst")


@dataclass
class Group:
    pairs: list[Pair]
    lines: list[int]  # every (readable) line of the unit
    unused: dict[int, str] = field(default_factory=dict)  # line -> why no pair uses it


# ---------------------------------------------------------------- OASST1 rankings


@dataclass
class _Msg:
    line: int
    parent: str | None
    role: str
    text: str
    lang: str | None
    rank: int | None
    removed: str | None  # "oasst_deleted" / "oasst_review_failed" / None
    tree: str | None
    children: list[str] = field(default_factory=list)


def _oasst_msg(v: Any) -> tuple[str, _Msg]:
    v = v if isinstance(v, dict) else None
    if v is None:
        raise LayoutError("wrong layout: expected an OASST1 message object")
    mid, parent = v.get("message_id"), v.get("parent_id")
    if not isinstance(mid, str):
        raise LayoutError("missing field: 'message_id'" if mid is None else "wrong type: 'message_id'")
    if parent is not None and not isinstance(parent, str):
        raise LayoutError("wrong type: 'parent_id' must be a string or null")
    if v.get("role") not in ("prompter", "assistant"):
        raise LayoutError(f"wrong value: role is {v.get('role')!r}, expected 'prompter' or 'assistant'")
    if not isinstance(v.get("text"), str):
        raise LayoutError("missing field: 'text'" if "text" not in v else "wrong type: 'text'")
    rank = v.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank != int(rank)):
        raise LayoutError(f"wrong type: 'rank' must be an integer or null, got {rank!r}")
    removed = ("oasst_deleted" if v.get("deleted") is True else
               "oasst_review_failed" if v.get("review_result") is False else None)
    lang = v.get("lang") if isinstance(v.get("lang"), str) else None
    tree = v.get("message_tree_id") if isinstance(v.get("message_tree_id"), str) else None
    return mid, _Msg(0, parent, v["role"], v["text"], lang, None if rank is None else int(rank), removed, tree)


def read_oasst1_pairs(path: Path, ledger: Ledger, *, pairing: str = "best_vs_rest") -> Iterator[Group]:
    """Pairs of crowd-ranked sibling replies, one group per message tree (see module doc)."""
    path = Path(path)
    key = str(path)
    msgs: dict[str, _Msg] = {}
    for raw in _records(path, "oasst1", ledger):
        try:
            v = _require_object(raw)
            if "prompt" in v and "message_id" not in v:
                raise LayoutError("wrong layout: an OASST1 tree export line; pairs are read from the message-level "
                                  "export (one message a line, as in OpenAssistant/oasst1)")
            mid, m = _oasst_msg(v)
            if mid in msgs:
                raise LayoutError(f"duplicate message_id: {mid} (first on line {msgs[mid].line})")
        except LayoutError as e:
            ledger.reject(key, raw.line, str(e), raw.value)
            continue
        m.line = raw.line
        msgs[mid] = m
    for mid, m in msgs.items():
        if m.parent is not None and m.parent in msgs:
            msgs[m.parent].children.append(mid)
    _reject_unreachable(msgs, ledger, key)
    for mid, m in msgs.items():
        if m.parent is None:
            yield _oasst_tree(mid, msgs, pairing)


def _ranked_pairs(replies: list[str], msgs: dict[str, _Msg], pairing: str,
                  unused: dict[int, str]) -> list[tuple[str, str]]:
    """(chosen, rejected) ids among one prompter message's usable replies; reasons for the rest."""
    ranked = sorted((c for c in replies if msgs[c].rank is not None), key=lambda c: msgs[c].rank)
    for c in replies:
        if msgs[c].rank is None:
            unused[msgs[c].line] = "oasst_unranked"
    if len(ranked) < 2:
        for c in ranked:
            unused[msgs[c].line] = "oasst_single_ranked"
        return []
    best = ranked[0]
    if msgs[ranked[1]].rank == msgs[best].rank:
        for c in ranked:
            unused[msgs[c].line] = "oasst_tied_best"
        return []
    worse = ranked[1:] if pairing == "best_vs_rest" else ranked[-1:]
    for c in ranked[1:-1]:
        if pairing == "best_vs_worst":
            unused[msgs[c].line] = "oasst_middle_rank"
    return [(best, w) for w in worse]


def _oasst_tree(root: str, msgs: dict[str, _Msg], pairing: str) -> Group:
    """The pairs of one tree: a walk from the root, each prompter message's ranked replies."""
    group = Group([], [])
    lang = msgs[root].lang
    stack: list[tuple[str, list[str]]] = [(root, [])]  # (message, ids of the path above it)
    while stack:
        mid, above = stack.pop()
        m = msgs[mid]
        group.lines.append(m.line)
        if m.removed:
            group.unused[m.line] = m.removed
            _mark_below(mid, msgs, group, "oasst_under_removed")
            continue
        path = above + [mid]
        if m.role == "prompter":
            usable = [c for c in m.children if msgs[c].role == "assistant" and not msgs[c].removed]
            for chosen, rejected in _ranked_pairs(usable, msgs, pairing, group.unused):
                group.pairs.append(_oasst_pair(path, chosen, rejected, msgs, lang))
        stack.extend((c, path) for c in reversed(m.children))
    for line in group.lines:
        group.unused.setdefault(line, "oasst_no_pair_below")
    return group


def _mark_below(mid: str, msgs: dict[str, _Msg], group: Group, reason: str) -> None:
    stack = list(msgs[mid].children)
    while stack:
        c = stack.pop()
        group.lines.append(msgs[c].line)
        group.unused[msgs[c].line] = reason
        stack.extend(msgs[c].children)


def _oasst_pair(path: list[str], chosen: str, rejected: str, msgs: dict[str, _Msg], lang: str | None) -> Pair:
    prompt = [Turn("human" if msgs[i].role == "prompter" else "bot", msgs[i].text.strip()) for i in path]
    c, r = msgs[chosen], msgs[rejected]
    meta = {"chosen_id": chosen, "rejected_id": rejected, "chosen_rank": c.rank, "rejected_rank": r.rank,
            "tree": msgs[path[0]].tree or path[0]}
    return Pair(prompt, c.text.strip(), r.text.strip(), source="oasst1", lang=lang,
                id=f"oasst1:{chosen}>{rejected}", meta=meta,
                lines=tuple(msgs[i].line for i in path) + (c.line, r.line))


# ---------------------------------------------------------------- users' pairs

PAIR_LAYOUTS = ("prompt/chosen/rejected (TRL, strings or message lists; bloomchat's prepared pairs), chosen/rejected "
                "message lists with a shared prompt (TRL implicit prompt), instruction/input/chosen/rejected or an "
                "`output` list ranked best first (LLaMA-Factory), conversations + chosen/rejected (ShareGPT)")


def _reply(v: Any, name: str) -> str:
    """One reply: a string, a {from/role, value/content} object, or a list holding one assistant message."""
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, dict):
        v = [v]
    if isinstance(v, list):
        keys = ("from", "value") if v and isinstance(v[0], dict) and "from" in v[0] else ("role", "content")
        turns = _role_list(v, name, *keys)
        if len(turns) == 1 and turns[0].role == "bot":
            return turns[0].text
        raise LayoutError(f"wrong layout: '{name}' must hold one assistant reply, got {len(turns)} message(s)")
    raise LayoutError(f"wrong type: '{name}' is {type(v).__name__}, expected a string or messages")


def _implicit(v: dict) -> tuple[list[Turn], str, str]:
    """TRL's implicit prompt: chosen and rejected are whole conversations sharing all but the reply."""
    c, r = _role_list(v["chosen"], "chosen", "role", "content"), _role_list(v["rejected"], "rejected", "role",
                                                                              "content")
    if len(c) < 2 or c[:-1] != r[:-1] or c[-1].role != "bot" or r[-1].role != "bot":
        raise LayoutError("wrong layout: without 'prompt', chosen and rejected must be message lists that differ "
                          "only in their last (assistant) message")
    return c[:-1], c[-1].text, r[-1].text


def user_pairs(v: Any) -> list[tuple[list[Turn], str, str]]:
    """(prompt turns, chosen, rejected) of one user record, in the layouts of PAIR_LAYOUTS."""
    if not isinstance(v, dict):
        raise LayoutError(f"wrong layout: record is a JSON {type(v).__name__}, expected an object")
    if "instruction" in v and isinstance(v.get("output"), list):  # LLaMA-Factory ranking: best first
        out = v["output"]
        if len(out) < 2 or not all(isinstance(x, str) for x in out):
            raise LayoutError("wrong layout: a ranked 'output' must list at least 2 reply strings, best first")
        prompt = _alpaca({**v, "output": out[0]})[:-1]
        return [(prompt, out[0].strip(), x.strip()) for x in out[1:]]
    if "chosen" not in v or "rejected" not in v:
        raise LayoutError(f"wrong layout: keys {sorted(v)[:8]} match none of: {PAIR_LAYOUTS}")
    if "instruction" in v:
        prompt = _alpaca({**v, "output": ""})[:-1]
    elif "conversations" in v:
        items = v["conversations"]
        keys = ("from", "value") if items and isinstance(items[0], dict) and "from" in items[0] else ("role", "content")
        prompt = _role_list(items, "conversations", *keys)
    elif "prompt" in v:
        p = v["prompt"]
        text_key = "text" if isinstance(p, list) and p and isinstance(p[0], dict) and "content" not in p[0] else "content"
        prompt = [Turn("human", p.strip())] if isinstance(p, str) else _role_list(p, "prompt", "role", text_key)
    elif isinstance(v["chosen"], list) and isinstance(v["rejected"], list):
        return [_implicit(v)]
    else:
        raise LayoutError("wrong layout: chosen/rejected strings need a 'prompt' (or 'instruction')")
    return [(prompt, _reply(v["chosen"], "chosen"), _reply(v["rejected"], "rejected"))]


def read_user_pairs(path: Path, ledger: Ledger) -> Iterator[Group]:
    """A user's pairs file, layout decided per line (PAIR_LAYOUTS); one group per line."""
    path = Path(path)
    key, stem = str(path), file_stem(path)
    for raw in _records(path, "jsonl", ledger):
        try:
            found = user_pairs(raw.value)
            if not found or not found[0][0]:
                raise LayoutError("wrong layout: the prompt has no turn")
        except LayoutError as e:
            ledger.reject(key, raw.line, str(e), raw.value)
            continue
        lang = raw.value.get("lang") if isinstance(raw.value.get("lang"), str) and raw.value.get("lang") else None
        rid = raw.value.get("id")
        base = f"{path.name}:{rid}" if isinstance(rid, (str, int)) and not isinstance(rid, bool) else \
            f"{path.name}:{raw.line}"
        pairs = [Pair(prompt, c, r, source=f"user/{stem}", lang=lang,
                      id=base if len(found) == 1 else f"{base}#{k}", lines=(raw.line,),
                      meta={"rejected_rank": k} if len(found) > 1 else {})
                 for k, (prompt, c, r) in enumerate(found, 1)]
        yield Group(pairs, [raw.line])

