"""`bloomchat arena generate` with a local (micro) model through bloomchat.infer; resumable."""

from __future__ import annotations

import pytest

from arena_testlib import cli, write_jsonl


def _ok(r):
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_generate_with_a_local_model(micro_model_dir, tmp_path):
    dbfile = str(tmp_path / "arena.sqlite")
    pytest.importorskip("bloomchat.infer")
    write_jsonl(tmp_path / "p.jsonl", [{"id": i, "lang": "zh", "prompt": f"你好 {i}"} for i in range(3)]
                + [{"id": 9, "lang": "fr", "prompt": "Bonjour"}])
    _ok(cli("import-prompts", "--db", dbfile, tmp_path / "p.jsonl", "--set", "t"))
    args = ["generate", "--db", dbfile, "--system", "micro", "--model", micro_model_dir, "--langs", "zh",
            "--max-new-tokens", "4", "--batch-size", "2", "--seed", "0"]
    out = _ok(cli(*args))
    assert "3 replies of 'micro' stored" in out
    from sqlalchemy import select

    from bloomchat.arena.db import Database, Prompt, Reply

    db = Database(dbfile)
    with db.Session() as s:
        rows = s.execute(select(Prompt.lang, Reply.system, Reply.origin).join(Prompt, Prompt.id == Reply.prompt_id)).all()
    db.close()
    assert len(rows) == 3 and {r[0] for r in rows} == {"zh"} and all(r[2].startswith("local:") for r in rows)
    from bloomchat.arena.generate import pending_prompts

    db = Database(dbfile)
    assert pending_prompts(db, "micro", ["zh"]) == []  # a second run has nothing to do: resumable
    assert len(pending_prompts(db, "micro")) == 1  # the French prompt was left out by --langs
    db.close()


def test_generate_through_an_openai_compatible_endpoint(micro_model_dir, tmp_path, monkeypatch):
    """bloomchat's own OpenAI-compatible server (uvicorn, 127.0.0.1, free port, API key) stands in for a closed model."""
    server_mod = pytest.importorskip("bloomchat.infer.server")
    import threading
    import time

    import uvicorn

    from arena_testlib import free_port
    from bloomchat.infer import load_chat_model

    cm = load_chat_model(micro_model_dir, name="micro")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(server_mod.create_app(cm, api_keys={"sk-test"}, guards=None),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        dbfile = str(tmp_path / "arena.sqlite")
        write_jsonl(tmp_path / "p.jsonl", [{"id": i, "lang": "zh", "prompt": f"你好 {i}"} for i in range(3)])
        _ok(cli("import-prompts", "--db", dbfile, tmp_path / "p.jsonl", "--set", "t"))
        args = ["generate", "--db", dbfile, "--system", "closed-model", "--backend", "openai",
                "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "micro", "--max-new-tokens", "4",
                "--api-key-env", "ARENA_TEST_KEY"]
        r = cli(*args)
        assert r.returncode == 2 and "ARENA_TEST_KEY is not set" in r.stderr
        monkeypatch.setenv("ARENA_TEST_KEY", "sk-test")
        assert "3 replies of 'closed-model' stored" in _ok(cli(*args))
    finally:
        server.should_exit = True
        thread.join(30)
        cm.close()


def test_empty_replies_are_stored_and_counted(tmp_path):
    from types import SimpleNamespace

    from sqlalchemy import select

    from bloomchat.arena.db import Database, Reply
    from bloomchat.arena.generate import generate_replies
    from arena_testlib import seed_small

    db = Database(str(tmp_path / "arena.sqlite"))
    seed_small(db, langs=("zh",), n_prompts=3)
    model = SimpleNamespace(reply_batch=lambda chats, params: ["", " 好的 ", "\n"][:len(chats)])
    assert generate_replies(db, "quiet", model, None, batch_size=8) == (3, 2)
    with db.Session() as s:
        texts = sorted(s.scalars(select(Reply.text).where(Reply.system == "quiet")))
    db.close()
    assert texts == ["", "", "好的"]
