"""`bloomchat chat` for real: a child process on a pseudo-terminal, typed at like a user."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from bloomchat.infer import GenerationParams, load_chat_model

LAUNCH = "import sys, bloomchat.cli as c; sys.exit(c.main(sys.argv[1:]))"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Pty:
    def __init__(self, args):
        self.master, slave = pty.openpty()
        env = dict(os.environ, PYTHONUNBUFFERED="1", TERM="dumb", HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *args], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.buf = ""

    def expect(self, pattern: str, timeout: float = 60) -> str:
        """Read until `pattern` (regex) appears; returns the text before it and consumes it."""
        deadline = time.time() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.buf)
            if m:
                before, self.buf = self.buf[: m.start()], self.buf[m.end():]
                return before
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; got {self.buf[-500:]!r}")
            r, _, _ = select.select([self.master], [], [], left)
            if r:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError(f"process ended waiting for {pattern!r}; got {self.buf[-500:]!r}")
                self.buf += ANSI.sub("", data.decode("utf-8", "replace")).replace("\r\n", "\n")

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=20)
        finally:
            os.close(self.master)


def test_infer_terminal_chat_session(micro_model_dir, tmp_path):
    params = GenerationParams(temperature=0, max_new_tokens=12)
    cm = load_chat_model(micro_model_dir)
    try:
        first = cm.reply([{"role": "user", "content": "Hello there"}], params)
        second = cm.reply([{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first},
                           {"role": "user", "content": "And you?"}], params.replace(max_new_tokens=3))
    finally:
        cm.close()
    t = Pty(["chat", str(micro_model_dir), "--temperature", "0", "--max-new-tokens", "12", "--no-guards"])
    try:
        t.expect(r"you> ")
        t.send("Hello there")
        t.expect(r"bot> ")
        assert t.expect(r"\nyou> ").split("\n")[0].rstrip() == first.rstrip()
        t.send("/set max_new_tokens 3")
        assert "(max_new_tokens = 3)" in t.expect(r"you> ")
        t.send("/set top_p 7")
        assert "top_p must be in (0, 1]" in t.expect(r"you> ")
        t.send("And you?")  # multi-turn: the first exchange is part of the prompt
        t.expect(r"bot> ")
        assert t.expect(r"\nyou> ").split("\n")[0].rstrip() == second.rstrip()
        saved = tmp_path / "conv.json"
        t.send(f"/save {saved}")
        t.expect(r"you> ")
        t.send("/save " + str(tmp_path / "conv.jsonl"))
        t.expect(r"you> ")
        t.send("/reset")
        assert "cleared" in t.expect(r"you> ")
        t.send("/quit")
        assert t.close() == 0
    finally:
        if t.proc.poll() is None:
            t.proc.kill()
    data = json.loads(saved.read_text())
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "user", "assistant"]
    assert data["messages"][1]["content"] == first and data["params"]["max_new_tokens"] == 3
    rec = json.loads((tmp_path / "conv.jsonl").read_text().splitlines()[0])
    from bloomchat.conversation import Conversation

    conv = Conversation.from_record(rec)
    assert [t.role for t in conv.turns] == ["human", "bot", "human", "bot"]


def test_infer_terminal_chat_bad_model_is_one_line(tmp_path):
    t = Pty(["chat", str(tmp_path / "missing")])
    out = t.expect(r"\n", timeout=60)
    assert t.close() == 2
    assert out.startswith("bloomchat chat: error:") and "not found" in out


@pytest.mark.parametrize("flag", [["--temperature", "-1"], ["--max-new-tokens", "0"], ["--top-k", "-1"]])
def test_infer_terminal_chat_bad_flags(micro_model_dir, flag, capsys):
    import bloomchat.cli as cli

    assert cli.main(["chat", str(micro_model_dir), *flag]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bloomchat chat: error: flags:") and "\n" not in err


def test_infer_terminal_chat_says_when_a_guard_cut_printed_text(tiny_tokenizer):
    """The loop guard cuts text the terminal already printed: the user is told what was kept."""
    import io

    from bloomchat.infer.guards import GuardConfig, GuardedChat
    from bloomchat.infer.terminal import TerminalChat
    from infer_helpers import scripted_chat_model

    chat = GuardedChat(scripted_chat_model(tiny_tokenizer, " Fine, thanks." * 10),
                       GuardConfig(language=False, moderator=None))
    lines = iter(["How are you?", "/quit"])
    out = io.StringIO()
    try:
        TerminalChat(chat, GenerationParams(temperature=0, max_new_tokens=200), read=lambda _: next(lines),
                     out=out).run()
    finally:
        chat.close()
    text = out.getvalue()
    assert "Fine, thanks. Fine, thanks." in text  # the loop was streamed before it was recognised
    assert "(repetition cut: the reply kept in the conversation is: Fine, thanks.)" in text
