"""The arena web app: a rating page for raters, a results page for admins, one JSON API under /api.

    bloomchat arena serve --db arena.sqlite --port 8000     # then open http://127.0.0.1:8000/

Every /api call carries `Authorization: Bearer <token>` (issued by `bloomchat arena add-rater`).
Raters get pairs and vote; only admins read results and exports. The page builds every prompt
and reply with `textContent` and is served with a Content-Security-Policy that forbids inline
script, so a reply holding HTML or <script> is shown as text and never runs.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from bloomchat.arena import report
from bloomchat.arena.assign import next_assignment, outcome_of
from bloomchat.arena.db import Assignment, Database, Prompt, Rater, Reply, utcnow
from bloomchat.arena.stats import TIE_RULES
from bloomchat.arena.store import rater_by_token

STATIC = Path(__file__).with_name("static")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
COMMENT_MAX = 4000  # characters; a few paragraphs of feedback


class VoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assignment_id: int
    choice: Literal["left", "right", "tie", "both_bad"]
    comment: str | None = Field(default=None, max_length=COMMENT_MAX)


def create_app(db: Database, *, overlap: float = 0.1, seed: int | None = None) -> FastAPI:
    """The app over an open Database; `overlap` = share of pairs given to a second rater (agreement)."""
    app = FastAPI(title="bloomchat arena", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    rng = random.Random(seed)
    rng_lock = threading.Lock()

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        resp = await call_next(request)
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def current(authorization: str | None = Header(default=None)) -> Rater:
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401, "sign in with your token (Authorization: Bearer <token>)")
        r = rater_by_token(db, authorization[len("Bearer "):].strip())
        if r is None:
            raise HTTPException(401, "unknown or revoked token")
        return r

    def admin(r: Rater = Depends(current)) -> Rater:
        if not r.is_admin:
            raise HTTPException(403, "results are for admins only")
        return r

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    @app.get("/api/me")
    def me(r: Rater = Depends(current)):
        with db.Session() as s:
            done = s.scalar(select(func.count()).select_from(Assignment).where(
                Assignment.rater_id == r.id, Assignment.choice.is_not(None)))
        return {"name": r.name, "langs": r.lang_list, "is_admin": r.is_admin, "votes": done}

    @app.get("/api/next")
    def next_pair(r: Rater = Depends(current)):
        with rng_lock:
            sub = random.Random(rng.random())
        a = next_assignment(db, r.id, rng=sub, overlap=overlap)
        if a is None:
            return {"done": True}
        with db.Session() as s:
            p = s.get(Prompt, a.prompt_id)
            texts = dict(s.execute(select(Reply.system, Reply.text).where(
                Reply.prompt_id == a.prompt_id, Reply.system.in_([a.system_lo, a.system_hi]))).all())
            done = s.scalar(select(func.count()).select_from(Assignment).where(
                Assignment.rater_id == r.id, Assignment.choice.is_not(None)))
        # No system names, no reply ids, no counts of other raters: nothing that unblinds the pair.
        return {"done": False, "assignment_id": a.id, "lang": p.lang, "turns": json.loads(p.turns_json),
                "left": texts[a.left_system], "right": texts[a.right_system], "votes": done}

    @app.post("/api/vote")
    def vote(v: VoteIn, r: Rater = Depends(current)):
        with db.Session.begin() as s:
            a = s.get(Assignment, v.assignment_id)
            if a is None or a.rater_id != r.id:
                raise HTTPException(403, "this pair is not assigned to you")
            if a.choice is not None:
                if a.choice != v.choice:
                    raise HTTPException(409, "this pair has been voted already")
            else:
                a.choice, a.outcome = v.choice, outcome_of(v.choice, a.left_is_lo)
                a.comment = (v.comment or "").strip() or None
                a.voted_at = utcnow()
            return {"assignment_id": a.id, "choice": a.choice,
                    "left_system": a.left_system, "right_system": a.right_system}

    cache: dict = {}
    cache_lock = threading.Lock()

    def cached_results(rule: str, langs: list[str] | None) -> dict:
        """Results are recomputed only when a vote arrived since (the bootstraps take a second or two)."""
        with db.Session() as s:
            stamp = s.execute(select(func.count(), func.max(Assignment.voted_at)).where(Assignment.choice.is_not(None))).one()
        key = (rule, tuple(langs or ()), tuple(stamp))
        with cache_lock:
            if key in cache:
                return cache[key]
        doc = report.results(db, rule, langs)
        with cache_lock:
            cache.clear()  # only the newest state is worth keeping
            cache[key] = doc
        return doc

    def _rule(tie_rule: str) -> str:
        if tie_rule not in TIE_RULES:
            raise HTTPException(422, f"tie_rule must be one of {', '.join(TIE_RULES)}")
        return tie_rule

    @app.get("/api/results")
    def results(tie_rule: str = "seed", lang: list[str] | None = Query(default=None), _a: Rater = Depends(admin)):
        return cached_results(_rule(tie_rule), lang or None)

    @app.get("/api/results.csv")
    def results_csv(tie_rule: str = "seed", _a: Rater = Depends(admin)):
        return PlainTextResponse(report.pairs_csv(cached_results(_rule(tie_rule), None)), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="arena-results.csv"'})

    @app.get("/api/chart.png")
    def chart(tie_rule: str = "seed", _a: Rater = Depends(admin)):
        return Response(report.chart_png(cached_results(_rule(tie_rule), None)), media_type="image/png")

    @app.get("/api/votes.jsonl")
    def votes(_a: Rater = Depends(admin)):
        body = "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in report.votes_rows(db))
        return PlainTextResponse(body, media_type="application/x-ndjson; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="arena-votes.jsonl"'})

    @app.get("/api/status")
    def status(_a: Rater = Depends(admin)):
        with db.Session() as s:
            prompts = dict(s.execute(select(Prompt.lang, func.count()).group_by(Prompt.lang)).all())
            replies = dict(s.execute(select(Reply.system, func.count()).group_by(Reply.system)).all())
            raters = [{"name": n, "langs": l, "admin": a} for n, l, a in
                      s.execute(select(Rater.name, Rater.langs, Rater.is_admin).order_by(Rater.id)).all()]
            open_ = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.choice.is_(None)))
        return {"prompts_by_lang": prompts, "replies_by_system": replies, "raters": raters, "open_assignments": open_}

    return app
