"""Helpers shared by the arena tests (fixtures are in this folder's conftest.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SYSTEMS = ("alpha", "beta", "gamma")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def seed_small(db, langs=("zh", "fr"), n_prompts=4, systems=SYSTEMS, evil=False):
    """n prompts per language, every system replied to all; returns the prompt keys."""
    from bloomchat.arena.prompt_sets import PromptItem
    from bloomchat.arena.store import import_prompts

    items = []
    for lang in langs:
        for i in range(1, n_prompts + 1):
            q = f"question {i} in {lang}"
            if evil and i == 1:
                q = f'<img src=x onerror="window.__pwned=3">{q} <a href="javascript:window.__pwned=4">link</a>'
            item = PromptItem(f"t/{lang}/{i}", lang, "t", [{"role": "human", "text": q}])
            for s in systems:
                text = f"reply of {s} to {lang}/{i}"
                if evil and s == systems[0]:
                    text = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned=2\"><b>bold?</b>"
                item.replies[s] = text
            items.append(item)
    import_prompts(db, items, "test")
    return [i.key for i in items]


def cli(*argv) -> subprocess.CompletedProcess:
    """Run `bloomchat arena ...` in a subprocess the way a user would (arena verbs registered)."""
    code = ("import sys, bloomchat.cli as c; "
            "sys.exit(c.main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, "arena", *map(str, argv)], capture_output=True, text=True, timeout=120)


class Server:
    """`bloomchat arena serve` in a subprocess on 127.0.0.1 and a free port."""

    def __init__(self, db: str, overlap: float = 0.0):
        self.db, self.overlap = db, overlap
        self.proc = None
        self.port = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        import httpx

        self.port = free_port()
        code = ("import sys, bloomchat.cli as c; "
                "sys.exit(c.main(sys.argv[1:]))")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "arena", "serve", "--db", self.db, "--port", str(self.port),
             "--overlap", str(self.overlap), "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("arena server exited: " + self.proc.stdout.read())
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("arena server did not come up in 60 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
