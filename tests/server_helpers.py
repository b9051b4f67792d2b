"""`bloomchat serve` as a user starts it, for tests: a child process on a free port (--port 0),
ready once uvicorn prints the address it listens on.

A thread reads the child's output all along: the wait has a real deadline (a blocking readline
would not), and a chatty server never stalls on a full pipe.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

#: The `bloomchat` command in a child process, without relying on the console script being installed.
LAUNCH = "import sys, bloomchat.cli as c; sys.exit(c.main(sys.argv[1:]))"
_LISTENING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


class ServeProcess:
    """A running `bloomchat serve`: `url`, its output so far (`output()`), `stop()`."""

    def __init__(self, argv: list[str], env: dict[str, str] | None, timeout: float, python: str | None = None):
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", **(env or {}))
        self.proc = subprocess.Popen([python or sys.executable, "-c", LAUNCH, *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=full_env)
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or self.url is None:
            exited = self.proc.poll()
            self.stop()
            why = f"exited with code {exited}" if exited is not None else f"was not listening after {timeout:.0f} s"
            raise AssertionError(f"bloomchat {' '.join(argv)} {why}:\n{self.output()}")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            m = _LISTENING.search(line)
            if m and self.url is None:
                self.url = m.group(1)
                self._ready.set()
        self._ready.set()  # the child exited (or closed its output) before listening

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 30) -> int:
        """Ctrl-C, as a user stops it; killed if it has not exited after `timeout`. The exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_serve(model, *args: str, env: dict[str, str] | None = None, timeout: float = 90,
                python: str | None = None) -> ServeProcess:
    """`bloomchat serve MODEL --port 0 ARGS...` in a child process (of `python`, default this one),
    returned once it listens."""
    return ServeProcess(["serve", str(model), "--port", "0", *map(str, args)], env, timeout, python)
