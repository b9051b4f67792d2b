"""Storage: migrations build exactly the ORM schema on SQLite and PostgreSQL, reopening is a no-op,
imports are idempotent, and tokens are stored only as hashes."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from arena_testlib import seed_small, write_jsonl
from bloomchat.arena.db import Base, Database, Rater, current_revision
from bloomchat.arena.store import add_rater, import_replies, list_raters, rater_by_token, revoke_rater
from bloomchat.errors import BloomchatError


def test_migrations_match_the_models(arena_db):
    with arena_db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert current_revision(arena_db.engine) == "0001"
    again = Database(arena_db.url)  # opening again runs no migration and keeps the data
    assert current_revision(again.engine) == "0001"
    again.close()


def test_sqlite_is_one_file_and_survives_reopen(tmp_path):
    path = tmp_path / "arena.sqlite"
    db = Database(str(path))
    seed_small(db)
    db.close()
    db = Database(str(path))
    from bloomchat.arena.db import Prompt, Reply

    with db.Session() as s:
        assert len(s.scalars(select(Prompt)).all()) == 8 and len(s.scalars(select(Reply)).all()) == 24
    db.close()
    # after a clean close the write-ahead log is folded back: the database is the one file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arena.sqlite"]


def test_tokens_hashed_and_revocable(arena_db):
    tok = add_rater(arena_db, "Li", ["zh", "fr"])
    with arena_db.Session() as s:
        stored = s.scalar(select(Rater).where(Rater.name == "Li"))
    assert tok not in (stored.token_hash, stored.name) and len(stored.token_hash) == 64
    assert rater_by_token(arena_db, tok).lang_list == ["zh", "fr"]
    with pytest.raises(BloomchatError, match="exists already"):
        add_rater(arena_db, "Li", ["zh"])
    revoke_rater(arena_db, "Li")
    assert rater_by_token(arena_db, tok) is None
    assert list_raters(arena_db) == [{"name": "Li", "langs": ["zh", "fr"], "admin": False, "active": False, "votes": 0}]


def test_replies_import_idempotent_conflict_and_replace(arena_db, tmp_path):
    seed_small(arena_db, systems=("a", "b"))
    f = write_jsonl(tmp_path / "c.jsonl", [{"prompt_id": "t/zh/1", "system": "c", "reply": "甲"},
                                           {"prompt_id": "t/zh/2", "system": "c", "reply": "乙"}])
    assert str(import_replies(arena_db, f)) == "2 added, 0 already present"
    assert str(import_replies(arena_db, f)) == "0 added, 2 already present"
    changed = write_jsonl(tmp_path / "c2.jsonl", [{"prompt_id": "t/zh/1", "system": "c", "reply": "丙"}])
    with pytest.raises(BloomchatError, match=r"c2\.jsonl:1: system 'c' already has a different reply .* --replace"):
        import_replies(arena_db, changed)
    assert str(import_replies(arena_db, changed, replace=True)) == "0 added, 0 already present, 1 replaced"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt_id": "t/zh/1", "system": "", "reply": "x"}])
    with pytest.raises(BloomchatError, match=r"bad\.jsonl:1 system: 'system' must be"):
        import_replies(arena_db, bad)


@pytest.mark.parametrize("url", ["nonsense://x", "postgres://u@127.0.0.1:1/db"])
def test_unusable_database_url_is_one_clear_error(url):
    from bloomchat.arena.db import Database

    with pytest.raises(BloomchatError, match="cannot use this database kind"):
        Database(url)
