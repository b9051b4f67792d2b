"""Fill in one system's replies by asking a model: a local one or an OpenAI-compatible endpoint.

    bloomchat arena generate --system bloomchat-7b --model out/stage2 --langs zh,fr
    bloomchat arena generate --system gpt-4 --backend openai --base-url https://api.openai.com/v1 \
        --model gpt-4 --api-key-env OPENAI_API_KEY

Only prompts that have no reply from that system yet are asked, and replies are saved after each
batch, so an interrupted run continues where it stopped. Sampling defaults are BLOOMChat's
(temperature 0.8, top_p 0.9, repetition penalty 1.2, 512 new tokens).
"""

from __future__ import annotations

import json

from sqlalchemy import select

from bloomchat.arena.db import Database, Prompt, Reply
from bloomchat.arena.store import check_system


def pending_prompts(db: Database, system: str, langs: list[str] | None = None) -> list[tuple[int, list[dict]]]:
    """(prompt row id, OpenAI-style messages) of every prompt still lacking a reply from `system`."""
    with db.Session() as s:
        have = select(Reply.prompt_id).where(Reply.system == system)
        q = select(Prompt.id, Prompt.turns_json).where(Prompt.id.not_in(have)).order_by(Prompt.id)
        if langs:
            q = q.where(Prompt.lang.in_(langs))
        out = []
        for pid, tj in s.execute(q).all():
            msgs = [{"role": "user" if t["role"] == "human" else "assistant", "content": t["text"]} for t in json.loads(tj)]
            out.append((pid, msgs))
        return out


def generate_replies(db: Database, system: str, chat_model, params, *, langs: list[str] | None = None,
                     batch_size: int = 16, origin: str = "") -> tuple[int, int]:
    """Ask `chat_model.reply_batch` for every pending prompt; returns (replies stored, of them empty).

    An empty reply (the model stopped at once) is stored as it is: it is the model's answer, and
    raters see it marked as empty and can vote it down."""
    from tqdm.auto import tqdm

    system = check_system(system, "--system")
    todo = pending_prompts(db, system, langs)
    n = empty = 0
    with tqdm(total=len(todo), desc=f"replies of {system}", unit="prompt") as bar:
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            texts = chat_model.reply_batch([m for _, m in chunk], params)
            with db.Session.begin() as s:
                for (pid, _), text in zip(chunk, texts):
                    s.add(Reply(prompt_id=pid, system=system, text=text.strip(), origin=origin[:500]))
                    empty += not text.strip()
            n += len(chunk)
            bar.update(len(chunk))
    return n, empty
