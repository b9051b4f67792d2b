"""`bloomchat chat MODEL`: a multi-turn terminal chat, replies streamed as they are generated.

    bloomchat chat out/stage2                          # BLOOMChat defaults: T 0.8, top_p 0.9, top_k 50, rep 1.2, 512 tokens
    bloomchat chat out/stage2 --temperature 0 --max-new-tokens 256 --quantize int8
    bloomchat chat my-model --backend openai --base-url http://127.0.0.1:8000/v1

In the session: /set NAME VALUE (temperature, top_p, top_k, repetition_penalty, max_new_tokens,
seed, stop), /params, /reset, /save FILE (.jsonl: a prepared-file record; else JSON), /stats, /help,
/quit. Ctrl-C stops a reply; Ctrl-D leaves. A line ending in a backslash continues on the next.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, TextIO

from bloomchat.errors import BloomchatError
from bloomchat.infer.params import GenerationParams

HELP = """commands:
  /set NAME VALUE   change a sampling parameter (temperature, top_p, top_k, repetition_penalty,
                    max_new_tokens, seed, stop; stop strings are separated by |)
  /params           show the parameters
  /reset            forget the conversation
  /save FILE        save the conversation (FILE.jsonl: bloomchat prepared record; else JSON)
  /stats            how often each guard fired
  /quit             leave (or Ctrl-D); Ctrl-C stops a reply"""


class TerminalChat:
    """The session state and its commands; `run()` is the read-reply loop."""

    def __init__(self, chat, params: GenerationParams, *, system: str | None = None,
                 read: Callable[[str], str] = input, out: TextIO = sys.stdout, model_label: str = ""):
        self.chat, self.params, self.system = chat, params, system
        self.read, self.out, self.model_label = read, out, model_label
        self.messages: list[dict[str, str]] = []

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    # ---------------------------------------------------------------- commands
    def command(self, line: str) -> bool:
        """Run a /command; returns False when the session should end."""
        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            self.say(HELP)
        elif name == "reset":
            self.messages.clear()
            self.say("(conversation cleared)")
        elif name == "params":
            self.say(json.dumps(self.params.to_dict(), ensure_ascii=False))
        elif name == "set":
            key, _, value = rest.partition(" ")
            try:
                self.params = self.params.with_setting(key.strip(), value.strip())
                self.say(f"({key} = {getattr(self.params, key)!r})")
            except BloomchatError as e:
                self.say(f"error: {e}")
        elif name == "save":
            if not rest:
                self.say("usage: /save FILE")
            else:
                try:
                    self.say(f"(saved to {self.save(Path(rest).expanduser())})")
                except OSError as e:
                    self.say(f"error: cannot write {rest}: {e.strerror}")
        elif name == "stats":
            stats = getattr(self.chat, "stats", None)
            self.say(json.dumps(stats.snapshot() if stats else {}, ensure_ascii=False))
        else:
            self.say(f"unknown command /{name}; /help lists them")
        return True

    def save(self, path: Path) -> Path:
        if path.suffix == ".jsonl":
            from bloomchat.conversation import Conversation, Turn

            turns = [Turn("human" if m["role"] == "user" else "bot", m["content"]) for m in self.messages]
            rec = Conversation(turns=turns, source="bloomchat-chat", meta={"model": self.model_label,
                                                                            "params": self.params.to_dict()})
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rec.to_record(), ensure_ascii=False) + "\n")
        else:
            path.write_text(json.dumps({"model": self.model_label, "params": self.params.to_dict(),
                                        "system": self.system, "messages": self.messages},
                                       ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path

    # ---------------------------------------------------------------- conversation
    def _fit(self, msgs: list[dict]) -> list[dict]:
        """Drop the oldest exchanges until prompt + max_new_tokens fits the model's context."""
        prompt_ids = getattr(getattr(self.chat, "backend", self.chat), "prompt_ids", None)
        context = getattr(getattr(self.chat, "backend", self.chat), "context", None)
        if prompt_ids is None or context is None:
            return msgs
        dropped = 0
        while len(prompt_ids(msgs)) + self.params.max_new_tokens > context and len(msgs) > 1 + bool(self.system):
            del msgs[1 if self.system else 0]
            dropped += 1
        if dropped:
            self.say(f"(left out the {dropped} oldest messages to fit the {context}-token context)")
        return msgs

    def turn(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + list(self.messages)
        msgs = self._fit(msgs)
        self.say("bot> ", end="")
        parts: list[str] = []
        stream = self.chat.stream_events(msgs, self.params)
        finish, shown = None, None
        try:
            for ev in stream:
                if ev.text:
                    parts.append(ev.text)
                    self.say(ev.text, end="")
                if ev.done:
                    finish = ev.finish_reason
                    if ev.final_text is not None:
                        shown = "".join(parts)
                        parts = [ev.final_text]
        except KeyboardInterrupt:
            finish = "interrupted"
        finally:
            stream.close()
        self.say()
        if shown is not None and len(parts[0]) < len(shown):
            # a guard cut text already printed (a loop): say so, since the terminal cannot unprint it
            self.say(f"(repetition cut: the reply kept in the conversation is: {parts[0]})")
        if finish in ("length", "interrupted", "content_filter"):
            self.say(f"({finish})")
        self.messages.append({"role": "assistant", "content": "".join(parts)})

    def run(self) -> int:
        self.say(f"bloomchat chat · {self.model_label} · /help for commands, /quit to leave")
        while True:
            try:
                line = self.read("you> ")
                while line.endswith("\\"):
                    line = line[:-1] + "\n" + self.read("...> ")
            except EOFError:
                self.say()
                return 0
            except KeyboardInterrupt:
                self.say()
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return 0
                continue
            try:
                self.turn(line)
            except BloomchatError as e:
                self.messages.pop()
                self.say(f"\nerror: {e}")
