"""Arena fixtures: a throwaway PostgreSQL cluster (one per test session) and an empty arena database
on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from arena_testlib import IN_CI, free_port


def _pg_bin() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a free port (Debian binaries, run as `postgres`).

    Skipped when the binaries are absent, except under CI=true where it fails.
    """
    bindir = _pg_bin()
    if bindir is None or shutil.which("runuser") is None:
        msg = "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin"
        if IN_CI:
            pytest.fail(msg + " (CI installs the postgresql package)")
        pytest.skip(msg)
    as_pg = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="arena-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    subprocess.run(as_pg + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                            "--locale=C.UTF-8"], check=True, capture_output=True)
    subprocess.run(as_pg + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
                            "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        subprocess.run(as_pg + [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "arena"], check=True, capture_output=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/arena"
    finally:
        subprocess.run(as_pg + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def arena_db(request, tmp_path):
    """An empty, migrated arena Database: a SQLite file, and the test PostgreSQL (emptied after each test)."""
    from bloomchat.arena.db import Database

    if request.param == "sqlite":
        db = Database(str(tmp_path / "arena.sqlite"))
        yield db
        db.close()
        return
    import sqlalchemy as sa

    url = request.getfixturevalue("postgres_url")
    db = Database(url)
    yield db
    db.close()
    eng = sa.create_engine(url)
    with eng.begin() as c:  # back to an empty database: the next test migrates from scratch
        c.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    eng.dispose()
