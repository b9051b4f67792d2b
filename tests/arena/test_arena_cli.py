"""`bloomchat arena ...` as a user runs it: init, imports, raters, results table, exports, errors, generate."""

from __future__ import annotations

import json
import re

import pytest

from arena_testlib import cli, write_jsonl


def _ok(r):
    assert r.returncode == 0, r.stderr
    return r.stdout


def _token(out: str) -> str:
    return re.search(r"token .*: (\S+)$", out.strip().splitlines()[-1]).group(1)


@pytest.fixture
def dbfile(tmp_path):
    return str(tmp_path / "arena.sqlite")


def test_full_cli_flow(shared_data, tmp_path, dbfile):
    out = _ok(cli("init", "--db", dbfile))
    assert "schema 0001" in out and _token(out).startswith("adm_")
    assert "an admin exists already" in _ok(cli("init", "--db", dbfile))
    folder = shared_data("eval_prompts_vicuna80_12lang")
    out = _ok(cli("import-prompts", "--db", dbfile, folder / "questions_Chinese.jsonl", folder / "questions_French.jsonl"))
    assert "80 added" in out and "(zh)" in out and "(fr)" in out
    assert "0 added, 80 already present" in _ok(cli("import-prompts", "--db", dbfile, folder / "questions_Chinese.jsonl"))
    prompts = tmp_path / "prompts.jsonl"
    assert "160 prompts" in _ok(cli("export", "--db", dbfile, "--prompts", prompts))
    recs = [json.loads(x) for x in prompts.read_text(encoding="utf-8").splitlines()]
    assert recs[0]["prompt_id"] == "vicuna80_12lang/zh/1" and recs[0]["messages"][0]["role"] == "user"
    for system in ("sys-a", "sys-b"):
        write_jsonl(tmp_path / f"{system}.jsonl",
                    [{"prompt_id": r["prompt_id"], "system": system, "reply": f"{system}: {r['turns'][-1]['text']}"} for r in recs])
    out = _ok(cli("import-replies", "--db", dbfile, tmp_path / "sys-a.jsonl", tmp_path / "sys-b.jsonl"))
    assert out.count("160 added") == 2
    tok = _token(_ok(cli("add-rater", "--db", dbfile, "Li", "--langs", "zh,fr")))
    assert tok.startswith("rtr_")
    # vote through the app in-process, then read the results from the terminal
    from fastapi.testclient import TestClient

    from bloomchat.arena.app import create_app
    from bloomchat.arena.db import Database

    db = Database(dbfile)
    with TestClient(create_app(db, seed=0)) as client:
        h = {"Authorization": f"Bearer {tok}"}
        for _ in range(6):
            p = client.get("/api/next", headers=h).json()
            client.post("/api/vote", headers=h, json={"assignment_id": p["assignment_id"],
                                                      "choice": "left" if p["left"].startswith("sys-a") else "right"})
    db.close()
    table = _ok(cli("results", "--db", dbfile))
    assert "6 votes" in table and "sys-a" in table and "100.0%" in table and "Bradley-Terry" in table
    doc = json.loads(_ok(cli("results", "--db", dbfile, "--json", "--ties", "half")))
    assert doc["tie_rule"]["name"] == "half" and doc["votes"] == 6
    outdir = tmp_path / "res"
    _ok(cli("export", "--db", dbfile, "--out", outdir))
    for name in ("results.json", "results.csv", "votes.csv", "votes.jsonl", "chart.png", "report.html"):
        assert (outdir / name).stat().st_size > 0, name
    assert (outdir / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert len((outdir / "votes.jsonl").read_text(encoding="utf-8").splitlines()) == 6
    assert json.loads((outdir / "results.json").read_text(encoding="utf-8"))["votes"] == 6


@pytest.mark.parametrize("argv, message", [
    (["import-replies", "{tmp}/missing.jsonl"], "missing.jsonl: no such file"),
    (["import-replies", "{tmp}/bad.jsonl"], r"bad\.jsonl:1 prompt_id: unknown prompt_id 'nope'"),
    (["add-rater", "Li"], "--langs: a rater needs the languages"),
    (["results", "--ties", "coin"], "--ties: choose one of seed, half, exclude"),
    (["import-prompts", "{tmp}/strings.jsonl"], "bare strings: pass --lang"),
    (["import-prompts", "{tmp}/x.json", "--ranked-replies", "o", "--ranked-top", "1"], "--ranked-top: must be at least 2"),
    (["serve", "--overlap", "2"], "--overlap: must be between 0 and 1"),
    (["results", "--db", "postgresql+psycopg2://nobody@127.0.0.1:1/none"], "cannot open database"),
])
def test_errors_are_one_line_exit_2(tmp_path, dbfile, argv, message, monkeypatch, capsys):
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt_id": "nope", "system": "s", "reply": "r"}])
    write_jsonl(tmp_path / "strings.jsonl", ["a", "b"])
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--db" not in argv:
        argv += ["--db", dbfile]
    import bloomchat.cli as bc

    monkeypatch.delenv("BLOOMCHAT_DEBUG", raising=False)
    rc = bc.main(["arena", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bloomchat arena: error:") and re.search(message, lines[0]), err


def test_folder_whose_files_reuse_ids_imports_whole(tmp_path, dbfile):
    # like LLM Zoo's folder: en100.jsonl and questions-en.jsonl both number different English prompts 1, 2, ...
    folder = tmp_path / "eval_prompts_zoo"
    folder.mkdir()
    write_jsonl(folder / "en100.jsonl", [{"id": 1, "query": "How are you?"}, {"id": 2, "query": "Deal with pressure?"}])
    write_jsonl(folder / "questions-en.jsonl", [{"question_id": 1, "text": "How are you?"},
                                                {"question_id": 2, "text": "Deal with stress?"}])
    r = cli("import-prompts", "--db", dbfile, folder)
    assert r.returncode == 0, r.stderr
    assert "2 added" in r.stdout.splitlines()[0] and "2 added" in r.stdout.splitlines()[1]
    assert "zoo.questions-en" in r.stderr
    # re-running adds nothing and still succeeds
    r = cli("import-prompts", "--db", dbfile, folder)
    assert r.returncode == 0 and r.stdout.count("0 added, 2 already present") == 2, r.stderr
