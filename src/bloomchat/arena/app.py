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
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from bloomchat.arena import report
from bloomchat.arena.assign import next_assignment, outcome_of
from bloomchat.arena.db import Assignment, Database, Prompt, Rater, Reply, utcnow
from bloomchat.arena.stats import TIE_RULES
from bloomchat.arena.store import rater_by_token
from bloomchat.asgi_limits import BodyLimit, utf8_text

STATIC = Path(__file__).with_name("static")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
COMMENT_MAX = 4000  # characters; a few paragraphs of feedback
#: Largest request body: a vote with a full comment is under 4000 * 4 bytes of UTF-8 + ~100 of JSON
#: (16 KB; 6 bytes a character if every one is \u-escaped: 24 KB), so 64 KiB (65536 bytes) is ample.
MAX_BODY_BYTES = 64 * 1024
#: Largest id a database integer column holds (SQLite and PostgreSQL BIGINT: 2**63 - 1).
MAX_ID = 2**63 - 1


class VoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assignment_id: int = Field(ge=1, le=MAX_ID)
    choice: Literal["left", "right", "tie", "both_bad"]
    comment: Annotated[str, AfterValidator(utf8_text)] | None = Field(default=None, max_length=COMMENT_MAX)


TieRule = Literal[tuple(TIE_RULES)]  # type: ignore[valid-type]  # FastAPI answers 422 for others


def _doc(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {
        "type": "object", "properties": {"detail": {}}, "required": ["detail"]}}}}


#: The error answers of /api routes, for the OpenAPI schema.
AUTH_ERRORS = {401: _doc("missing, unknown or revoked token"), 413: _doc("request body over the size limit")}
ADMIN_ERRORS = {**AUTH_ERRORS, 403: _doc("results are for admins only")}
VOTE_ERRORS = {**AUTH_ERRORS, 403: _doc("this pair is not assigned to you"), 409: _doc("voted already"),
               422: _doc("invalid vote (the rejected value is not echoed)")}


class TokenCheck:
    """ASGI middleware: every /api call is checked for its rater token before its body is read, so
    an anonymous client cannot make the server read (or parse) anything; the rater rides along in
    the request state for the routes."""

    def __init__(self, app, db: Database):
        self.app, self.db = app, db

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").startswith("/api/") \
                or scope["path"] == "/api/openapi.json":
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        rater, why = None, "sign in with your token (Authorization: Bearer <token>)"
        if header.startswith("Bearer "):
            rater = await run_in_threadpool(rater_by_token, self.db, header[len("Bearer "):].strip())
            why = "unknown or revoked token"
        if rater is None:
            return await JSONResponse({"detail": why}, status_code=401,
                                      headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
        scope.setdefault("state", {})["rater"] = rater
        return await self.app(scope, receive, send)


def _install_openapi(app: FastAPI) -> None:
    """The schema as served: 401/413 on every /api route, and the bearer scheme they need."""
    def openapi() -> dict:
        if not app.openapi_schema:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for path, ops in schema.get("paths", {}).items():
                for op in ops.values():
                    if path.startswith("/api/"):
                        op["security"] = [{"bearerAuth": []}]
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "a rater token (arena add-rater)"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def create_app(db: Database, *, overlap: float = 0.1, seed: int | None = None) -> FastAPI:
    """The app over an open Database; `overlap` = share of pairs given to a second rater (agreement)."""
    app = FastAPI(title="bloomchat arena", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    rng = random.Random(seed)
    rng_lock = threading.Lock()

    # innermost first: the token check, then the size limit, then the headers every answer carries
    app.add_middleware(TokenCheck, db=db)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    _install_openapi(app)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        resp = await call_next(request)
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp


    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):  # FastAPI's own echoes the whole input
        detail = [{"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")} for err in e.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    def current(request: Request) -> Rater:
        r = getattr(request.state, "rater", None)
        if r is None:  # TokenCheck sets it for every /api path
            raise HTTPException(401, "sign in with your token (Authorization: Bearer <token>)")
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

    @app.get("/api/me", responses=AUTH_ERRORS)
    def me(r: Rater = Depends(current)):
        with db.Session() as s:
            done = s.scalar(select(func.count()).select_from(Assignment).where(
                Assignment.rater_id == r.id, Assignment.choice.is_not(None)))
        return {"name": r.name, "langs": r.lang_list, "is_admin": r.is_admin, "votes": done}

    @app.get("/api/next", responses=AUTH_ERRORS)
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

    @app.post("/api/vote", responses=VOTE_ERRORS)
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

    @app.get("/api/results", responses=ADMIN_ERRORS)
    def results(tie_rule: TieRule = "seed", lang: list[str] | None = Query(default=None), _a: Rater = Depends(admin)):
        return cached_results(tie_rule, lang or None)

    @app.get("/api/results.csv", responses=ADMIN_ERRORS)
    def results_csv(tie_rule: TieRule = "seed", _a: Rater = Depends(admin)):
        return PlainTextResponse(report.pairs_csv(cached_results(tie_rule, None)), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="arena-results.csv"'})

    @app.get("/api/chart.png", responses=ADMIN_ERRORS)
    def chart(tie_rule: TieRule = "seed", _a: Rater = Depends(admin)):
        return Response(report.chart_png(cached_results(tie_rule, None)), media_type="image/png")

    @app.get("/api/votes.jsonl", responses=ADMIN_ERRORS)
    def votes(_a: Rater = Depends(admin)):
        body = "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in report.votes_rows(db))
        return PlainTextResponse(body, media_type="application/x-ndjson; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="arena-votes.jsonl"'})

    @app.get("/api/status", responses=ADMIN_ERRORS)
    def status(_a: Rater = Depends(admin)):
        with db.Session() as s:
            prompts = dict(s.execute(select(Prompt.lang, func.count()).group_by(Prompt.lang)).all())
            replies = dict(s.execute(select(Reply.system, func.count()).group_by(Reply.system)).all())
            raters = [{"name": n, "langs": l, "admin": a} for n, l, a in
                      s.execute(select(Rater.name, Rater.langs, Rater.is_admin).order_by(Rater.id)).all()]
            open_ = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.choice.is_(None)))
        return {"prompts_by_lang": prompts, "replies_by_system": replies, "raters": raters, "open_assignments": open_}

    return app
