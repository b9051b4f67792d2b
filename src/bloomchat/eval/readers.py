"""Reading evaluation files with the file and line of every problem in the error message."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from bloomchat.errors import BloomchatError


def existing(path: str | Path, what: str = "file") -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise BloomchatError(f"{what} not found", where=str(p))
    return p


def read_lines(path: str | Path, *, allow_empty_lines: bool = False) -> list[str]:
    """One sentence a line (FLORES/WMT); a trailing newline is fine, an empty line is not."""
    p = existing(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise BloomchatError("not UTF-8 text", where=f"{p}:{line}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln.rstrip("\r") for ln in lines]
    if not allow_empty_lines:
        for i, ln in enumerate(lines, 1):
            if not ln.strip():
                raise BloomchatError("empty line (one sentence a line expected)", where=f"{p}:{i}")
    return lines


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line; bad JSON names file:line."""
    p = existing(path)
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise BloomchatError(f"invalid JSON: {e.msg} (column {e.colno})", where=f"{p}:{i}") from None


def read_table(path: str | Path, *, delimiter: str | None = None, header: bool = True) -> list[tuple[int, dict | list]]:
    """CSV/TSV rows as (line number, dict by header) — or lists when header=False."""
    p = existing(path)
    if delimiter is None:
        delimiter = "\t" if p.suffix.lower() in (".tsv", ".tab") else ","
    with p.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        rows = list(reader)
    out: list[tuple[int, dict | list]] = []
    if not rows:
        return out
    if header:
        names = [h.strip() for h in rows[0]]
        for i, r in enumerate(rows[1:], 2):
            if not any(c.strip() for c in r):
                continue
            if len(r) != len(names):
                raise BloomchatError(f"{len(r)} columns, header has {len(names)}", where=f"{p}:{i}")
            out.append((i, dict(zip(names, r))))
    else:
        out = [(i, r) for i, r in enumerate(rows, 1) if any(c.strip() for c in r)]
    return out


def field(rec: dict, names: tuple[str, ...], where: str, *, kind: type | tuple = str, required: bool = True):
    """The first of `names` present in `rec`, checked to be of `kind`."""
    for n in names:
        if n in rec:
            v = rec[n]
            if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
                raise BloomchatError(f"field {n!r} must be {_kind_name(kind)}, got {type(v).__name__}", where=where)
            return v
    if required:
        raise BloomchatError(f"missing field {' or '.join(repr(n) for n in names)}", where=where)
    return None


def _kind_name(kind) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__
