"""Writing to the arena: prompts, replies, raters. Every import is idempotent (re-running it adds nothing)."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from bloomchat.arena.db import Database, Prompt, Rater, Reply
from bloomchat.arena.prompt_sets import PromptItem, check_lang
from bloomchat.errors import BloomchatError

_SYSTEM_MAX = 100  # column width of replies.system


@dataclass
class ImportSummary:
    added: int = 0
    unchanged: int = 0
    replaced: int = 0

    def __str__(self) -> str:
        s = f"{self.added} added, {self.unchanged} already present"
        return s + (f", {self.replaced} replaced" if self.replaced else "")


def turns_json(turns: list[dict[str, str]]) -> str:
    return json.dumps([{"role": t["role"], "text": t["text"]} for t in turns], ensure_ascii=False)


def import_prompts(db: Database, items: list[PromptItem], origin: str) -> tuple[ImportSummary, ImportSummary]:
    """Add prompts (and replies carried by ranked files); a key already holding another prompt is an error."""
    ps, rs = ImportSummary(), ImportSummary()
    with db.Session.begin() as s:
        existing = {p.key: p for p in s.scalars(select(Prompt).where(Prompt.key.in_([i.key for i in items])))}
        for item in items:
            tj = turns_json(item.turns)
            p = existing.get(item.key)
            if p is None:
                p = Prompt(key=item.key, lang=item.lang, set_name=item.set_name, category=item.category, turns_json=tj)
                s.add(p)
                existing[item.key] = p
                ps.added += 1
            elif p.turns_json != tj or p.lang != item.lang:
                raise BloomchatError(
                    f"prompt id {item.key!r} already holds a different prompt; import this file with "
                    f"--set NAME to give its prompts other ids", where=origin)
            else:
                ps.unchanged += 1
        s.flush()
        ids = [existing[i.key].id for i in items if i.replies]
        have = {(r.prompt_id, r.system): r for r in s.scalars(select(Reply).where(Reply.prompt_id.in_(ids)))} if ids else {}
        for item in items:
            for system, text in item.replies.items():
                _put_reply(s, existing[item.key], system, text, origin, rs, replace=False, where=origin, have=have)
    return ps, rs


def _put_reply(s, prompt: Prompt, system: str, text: str, origin: str, summary: ImportSummary, *, replace: bool,
               where: str, have: dict | None = None):
    """Add one reply; `have` maps (prompt id, system) to the replies already stored (one query for a file)."""
    if have is None:
        r = s.scalar(select(Reply).where(Reply.prompt_id == prompt.id, Reply.system == system))
    else:
        r = have.get((prompt.id, system))
    if r is None:
        r = Reply(prompt_id=prompt.id, system=system, text=text, origin=origin[:500])
        s.add(r)
        if have is not None:
            have[(prompt.id, system)] = r
        summary.added += 1
    elif r.text == text:
        summary.unchanged += 1
    elif replace:
        r.text, r.origin = text, origin[:500]
        summary.replaced += 1
    else:
        raise BloomchatError(
            f"system {system!r} already has a different reply to {prompt.key!r} (pass --replace to overwrite)",
            where=where)


def check_system(name, where: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > _SYSTEM_MAX:
        raise BloomchatError(f"'system' must be a non-empty name of at most {_SYSTEM_MAX} characters", where=where)
    return name.strip()


def import_replies(db: Database, path: str | Path, *, system: str | None = None, replace: bool = False) -> ImportSummary:
    """Replies file: JSONL `{"prompt_id", "system", "reply"}`; `system` may be given for the whole file instead."""
    path = Path(path)
    if not path.is_file():
        raise BloomchatError("no such file", where=str(path))
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise BloomchatError(f"not JSON: {e.msg}", where=where) from None
            if not isinstance(rec, dict):
                raise BloomchatError("line is not a JSON object", where=where)
            sysname = check_system(system or rec.get("system"), where + " system")
            pid = rec.get("prompt_id")
            if not isinstance(pid, (str, int)) or isinstance(pid, bool):
                raise BloomchatError("'prompt_id' must be a string", where=where + " prompt_id")
            reply = rec.get("reply")
            if not isinstance(reply, str) or not reply.strip():
                raise BloomchatError("'reply' must be a non-empty string", where=where + " reply")
            rows.append((where, str(pid), sysname, reply))
    if not rows:
        raise BloomchatError("file holds no replies", where=str(path))
    summary = ImportSummary()
    with db.Session.begin() as s:
        prompts = {p.key: p for p in s.scalars(select(Prompt).where(Prompt.key.in_({r[1] for r in rows})))}
        ids = [p.id for p in prompts.values()]
        have = {(r.prompt_id, r.system): r for r in s.scalars(select(Reply).where(Reply.prompt_id.in_(ids)))} if ids else {}
        for where, pid, sysname, reply in rows:
            p = prompts.get(pid)
            if p is None:
                example = s.scalar(select(Prompt.key).limit(1))
                hint = f" (ids look like {example!r}; see `bloomchat arena export --prompts`)" if example else \
                    " (no prompts imported yet: run `bloomchat arena import-prompts` first)"
                raise BloomchatError(f"unknown prompt_id {pid!r}{hint}", where=where + " prompt_id")
            _put_reply(s, p, sysname, reply, str(path), summary, replace=replace, where=where, have=have)
    return summary


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_rater(db: Database, name: str, langs: list[str], *, admin: bool = False) -> str:
    """Create a rater (or admin) and return the personal token; only its hash is stored."""
    name = name.strip()
    if not name or len(name) > 100:
        raise BloomchatError("rater name must be 1 to 100 characters", where="NAME")
    langs = [check_lang(x, "--langs") for x in langs if x.strip()]
    if not langs and not admin:
        raise BloomchatError("a rater needs the languages they are native in, e.g. --langs zh,fr", where="--langs")
    token = ("adm_" if admin else "rtr_") + secrets.token_urlsafe(24)
    with db.Session.begin() as s:
        if s.scalar(select(Rater).where(Rater.name == name)) is not None:
            raise BloomchatError(f"a rater named {name!r} exists already", where="NAME")
        s.add(Rater(name=name, langs=",".join(dict.fromkeys(langs)), is_admin=admin, token_hash=hash_token(token), active=True))
    return token


def rater_by_token(db: Database, token: str) -> Rater | None:
    with db.Session() as s:
        return s.scalar(select(Rater).where(Rater.token_hash == hash_token(token), Rater.active.is_(True)))


def export_prompts(db: Database, path: str | Path, langs: list[str] | None = None) -> int:
    """Prompts as JSONL for systems replying elsewhere: `{"prompt_id", "lang", "turns", "messages"}`."""
    n = 0
    with db.Session() as s, Path(path).open("w", encoding="utf-8") as f:
        q = select(Prompt).order_by(Prompt.id)
        if langs:
            q = q.where(Prompt.lang.in_(langs))
        for p in s.scalars(q):
            turns = json.loads(p.turns_json)
            messages = [{"role": "user" if t["role"] == "human" else "assistant", "content": t["text"]} for t in turns]
            f.write(json.dumps({"prompt_id": p.key, "lang": p.lang, "category": p.category, "turns": turns,
                                "messages": messages}, ensure_ascii=False) + "\n")
            n += 1
    return n


def list_raters(db: Database) -> list[dict]:
    """Name, languages, role, state and vote count of every rater (for admins; tokens are never shown)."""
    from sqlalchemy import func

    from bloomchat.arena.db import Assignment

    with db.Session() as s:
        votes = dict(s.execute(select(Assignment.rater_id, func.count()).where(Assignment.choice.is_not(None))
                               .group_by(Assignment.rater_id)).all())
        return [{"name": r.name, "langs": r.lang_list, "admin": r.is_admin, "active": r.active, "votes": votes.get(r.id, 0)}
                for r in s.scalars(select(Rater).order_by(Rater.id))]


def revoke_rater(db: Database, name: str) -> None:
    """Disable a token at once; the rater's votes stay in the results."""
    with db.Session.begin() as s:
        r = s.scalar(select(Rater).where(Rater.name == name))
        if r is None:
            raise BloomchatError(f"no rater named {name!r}", where="NAME")
        r.active = False
