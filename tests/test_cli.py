"""The CLI frame: every built verb is listed, user errors are one line and exit 2, never a traceback."""

import subprocess
import sys

from bloomchat.cli import VERB_MODULES, build_parser, main
from bloomchat.demo.workdir import shipped_recipe

VERBS = {"demo", "base", "prepare", "prepare-pairs", "data-report", "pack", "pack-check", "pack-show", "train", "chat", "serve", "eval", "arena", "export"}


def test_help_lists_every_verb():
    out = subprocess.run([sys.executable, "-m", "bloomchat", "--help"], capture_output=True, text=True, check=True).stdout
    for verb in VERBS:
        assert f"    {verb}" in out, verb
    assert len(VERB_MODULES) == len(set(VERB_MODULES))
    assert set(build_parser()._subparsers._group_actions[0].choices) == VERBS


def test_user_error_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bloomchat", "pack", str(tmp_path / "missing.jsonl"),
                           "--tokenizer", str(tmp_path / "tok"), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("bloomchat pack: error:") and "missing.jsonl" in lines[-1]


def test_unknown_verb_is_a_usage_error(capsys):
    try:
        main(["no-such-verb"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("argparse accepted an unknown verb")


def test_shipped_recipes_are_inside_the_package():
    for name in ("demo", "bloom-560m-lora", "bloomchat-176b"):
        path = shipped_recipe(name)
        assert "bloomchat" in path.parts and path.read_text().strip()


def test_a_closed_pipe_is_not_an_error():
    code = ("import argparse, sys\n"
            "from bloomchat.errors import run_verb\n"
            "def f(a):\n    raise BrokenPipeError\n"
            "sys.exit(run_verb(argparse.Namespace(func=f, verb='pack-show')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
