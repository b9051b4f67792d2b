"""Arena storage: SQLAlchemy tables, opened through alembic migrations (run on every open).

SQLite by default (one file; WAL and BEGIN IMMEDIATE so concurrent raters queue instead of
failing), PostgreSQL by URL (`postgresql+psycopg2://user@host:port/db`) for a team.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from bloomchat.errors import BloomchatError

#: Environment variable naming the database when --db is not given.
DB_ENV = "BLOOMCHAT_ARENA_DB"
DEFAULT_DB = "arena.sqlite"
MIGRATIONS = Path(__file__).with_name("migrations")

CHOICES = ("left", "right", "tie", "both_bad")
OUTCOMES = ("lo", "hi", "tie", "both_bad")  # the choice in system terms (lo/hi = sorted system names)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Prompt(Base):
    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)  # e.g. "vicuna80/zh/1"
    lang: Mapped[str] = mapped_column(String(16), index=True)
    set_name: Mapped[str] = mapped_column(String(100))
    category: Mapped[str | None] = mapped_column(String(100), nullable=True)
    turns_json: Mapped[str] = mapped_column(Text)  # [{"role": "human"|"bot", "text"}], last one human
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Reply(Base):
    __tablename__ = "replies"
    __table_args__ = (UniqueConstraint("prompt_id", "system", name="uq_reply_prompt_system"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    system: Mapped[str] = mapped_column(String(100), index=True)
    text: Mapped[str] = mapped_column(Text)
    origin: Mapped[str | None] = mapped_column(String(500), nullable=True)  # file or model it came from
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Rater(Base):
    __tablename__ = "raters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    langs: Mapped[str] = mapped_column(String(200), default="")  # comma-separated codes
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; the token is never stored
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def lang_list(self) -> list[str]:
        return [x for x in self.langs.split(",") if x]


class Assignment(Base):
    """One pair shown to one rater; the vote is filled in on the same row."""

    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("rater_id", "prompt_id", "system_lo", "system_hi", name="uq_rater_pair"),
        Index("ix_assignment_item", "prompt_id", "system_lo", "system_hi"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    system_lo: Mapped[str] = mapped_column(String(100))  # the two systems, sorted by name
    system_hi: Mapped[str] = mapped_column(String(100))
    left_is_lo: Mapped[bool] = mapped_column(Boolean)  # random side, fixed when assigned
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    choice: Mapped[str | None] = mapped_column(String(10), nullable=True)  # left/right/tie/both_bad
    outcome: Mapped[str | None] = mapped_column(String(10), nullable=True)  # lo/hi/tie/both_bad
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    voted_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    @property
    def left_system(self) -> str:
        return self.system_lo if self.left_is_lo else self.system_hi

    @property
    def right_system(self) -> str:
        return self.system_hi if self.left_is_lo else self.system_lo


def resolve_url(db: str | None) -> str:
    """`--db` value (URL or plain file path) -> SQLAlchemy URL; default $BLOOMCHAT_ARENA_DB or ./arena.sqlite."""
    db = db or os.environ.get(DB_ENV) or DEFAULT_DB
    if "://" not in db:
        return f"sqlite:///{Path(db).expanduser().resolve()}"
    try:
        make_url(db)
    except ArgumentError as e:
        raise BloomchatError(f"not a database URL: {e}", where="--db") from None
    return db


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # pragma: no cover - exercised through every sqlite test
        dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below be the only one
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")  # 30 s: concurrent writers wait, never fail
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        # IMMEDIATE takes the write lock up front: a read-then-write transaction (assignment,
        # vote) can then never hit SQLITE_BUSY half-way, which WAL would not retry.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            parent = Path(u.database).parent
            if not parent.exists():
                raise BloomchatError(f"folder {parent} does not exist", where="--db")
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_pragmas(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest alembic revision (a no-op when it already is)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class Database:
    """An engine with its session factory; opening it migrates the schema."""

    def __init__(self, db: str | None = None, *, migrate_schema: bool = True):
        self.url = resolve_url(db)
        try:
            self.engine = make_engine(self.url)
        except (NoSuchModuleError, ImportError) as e:  # "postgres://", "mysql://" without its driver, typos
            raise BloomchatError(f"cannot use this database kind: {e} (SQLite paths and postgresql+psycopg2:// URLs "
                                 f"work out of the box)", where=_safe_url(self.url)) from None
        try:
            if migrate_schema:
                migrate(self.engine)
        except OperationalError as e:
            self.engine.dispose()
            msg = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
            raise BloomchatError(f"cannot open database: {msg}", where=_safe_url(self.url)) from None
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
