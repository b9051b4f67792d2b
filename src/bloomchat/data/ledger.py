"""Nothing is lost silently: per input file, lines read = kept + filtered (by reason) + rejected.

Readers call `read`, `reject` and `drop` (a line a BLOOMChat rule leaves out, e.g. `prosocial`);
`prepare` calls `keep` / `drop` for whole conversations, each worth the lines it was built from
(one for most sources, one per message for OASST1's message-level export). Rejected lines go
to the rejects JSONL with file, line and reason as they happen, so memory stays flat.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


@dataclass
class FileStats:
    path: str
    kind: str
    lines_read: int = 0
    blank_lines: int = 0
    kept: int = 0
    filtered: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    conversations_out: int = 0  # records written (unified_basic copies included)
    stopped_after: int | None = None  # OIG: items left unread after the first `per_source`

    @property
    def balanced(self) -> bool:
        return self.lines_read == self.kept + sum(self.filtered.values()) + sum(self.rejected.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "lines_read": self.lines_read,
            "blank_lines": self.blank_lines,
            "kept": self.kept,
            "filtered": dict(sorted(self.filtered.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "conversations_out": self.conversations_out,
            "stopped_after": self.stopped_after,
            "balanced": self.balanced,
        }


def reason_key(reason: str) -> str:
    """The counting key of a reject reason: its text before the first ':' (details vary per line)."""
    return reason.split(":", 1)[0].strip()


class Ledger:
    """Per-file accounting plus the rejects file."""

    def __init__(self, rejects: IO[str] | None = None):
        self.files: dict[str, FileStats] = {}
        self._rejects = rejects
        self.rejects_written = 0

    def file(self, path: Path | str, kind: str) -> FileStats:
        key = str(path)
        if key not in self.files:
            self.files[key] = FileStats(key, kind)
        return self.files[key]

    def read(self, path: str, n: int = 1) -> None:
        self.files[path].lines_read += n

    def blank(self, path: str) -> None:
        self.files[path].blank_lines += 1

    def reject(self, path: str, line: int, reason: str, value: Any = None) -> None:
        self.files[path].rejected[reason_key(reason)] += 1
        if self._rejects is not None:
            rec: dict[str, Any] = {"file": path, "line": line, "reason": reason}
            if value is not None:
                snippet = json.dumps(value, ensure_ascii=False)
                rec["record"] = snippet if len(snippet) <= 2000 else snippet[:2000] + "..."
            self._rejects.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self.rejects_written += 1

    def drop(self, path: str, reason: str, n: int = 1) -> None:
        self.files[path].filtered[reason] += n

    def keep(self, path: str, n: int = 1) -> None:
        self.files[path].kept += n

    def unkeep(self, path: str, reason: str, n: int = 1) -> None:
        """A kept conversation removed later (language cap): move its lines to `filtered`."""
        self.files[path].kept -= n
        self.files[path].filtered[reason] += n
