"""Stream raw records out of .jsonl, .jsonl.gz, .json (array or JSON Lines) and .parquet files.

Every record comes with its 1-based line number (row number for parquet, element number for a
JSON array) so that rejects can name where they are. Memory stays constant: files are read line
by line, parquet in record batches, JSON arrays element by element with `JSONDecoder.raw_decode`
over a sliding buffer (the standard library has no streaming array parser and `ijson` is not a
dependency).
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from bloomchat.errors import BloomchatError

#: Suffixes `open_records` understands, for error messages.
FORMATS = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")

_DECODER = json.JSONDecoder()
_CHUNK = 1 << 20  # 1 MiB read size for JSON arrays: large enough to hold most records whole


@dataclass
class Raw:
    """One record: `value` is the parsed JSON, or None with `error` saying why it could not be read."""

    line: int
    value: Any = None
    error: str | None = None


def file_format(path: Path) -> str:
    """'jsonl', 'json' or 'parquet' from the name; anything else is a user error."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    if name.endswith((".json", ".json.gz")):
        return "json"
    raise BloomchatError(
        f"unknown format (expected one of {', '.join(FORMATS)})", where=str(path)
    )


def check_file(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise BloomchatError("file not found", where=str(path))
    if not path.is_file():
        raise BloomchatError("not a file", where=str(path))
    file_format(path)
    return path


def _open_text(path: Path) -> io.BufferedReader:
    raw = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
    return raw  # type: ignore[return-value]


def _has_lone_surrogate(value: Any) -> bool:
    """JSON may escape half a UTF-16 pair ("\\ud800"): such text cannot be tokenised or written as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _iter_jsonl(path: Path) -> Iterator[Raw]:
    with _open_text(path) as f:
        try:
            for n, bline in enumerate(f, 1):
                try:
                    line = bline.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield Raw(n, error=f"invalid UTF-8: at byte {e.start}")
                    continue
                if not line.strip():
                    yield Raw(n, error="blank")
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    yield Raw(n, error=f"malformed JSON: {e.msg} (column {e.colno})")
                    continue
                if "\\u" in line and _has_lone_surrogate(value):
                    yield Raw(n, error="invalid UTF-8: a \\uD800-\\uDFFF escape that is not a surrogate pair")
                    continue
                yield Raw(n, value)
        except (OSError, EOFError) as e:  # truncated or corrupt gzip
            raise BloomchatError(f"cannot read file: {e}", where=str(path)) from None


def _iter_json(path: Path) -> Iterator[Raw]:
    """A .json file is either one JSON array (streamed element by element) or JSON Lines.

    An array element's `line` is the line where it starts.
    """
    with _open_text(path) as fb:
        f = io.TextIOWrapper(fb, encoding="utf-8", errors="strict")
        try:
            buf = f.read(_CHUNK)
            if not buf.lstrip().startswith("["):
                f.close()
                yield from _iter_jsonl(path)
                return
            pos = buf.index("[") + 1
            line = 1 + buf.count("\n", 0, pos)
            eof = False
            while True:
                if len(buf) - pos < _CHUNK and not eof:  # keep a whole record in the buffer when possible
                    more = f.read(_CHUNK)
                    eof = not more
                    buf = buf[pos:] + more
                    pos = 0
                i = pos
                while i < len(buf) and buf[i] in " \t\r\n,":
                    i += 1
                line += buf.count("\n", pos, i)
                pos = i
                if buf.startswith("]", pos):
                    return
                if pos >= len(buf) and eof:
                    raise BloomchatError("JSON array is not closed with ']'", where=f"{path}:{line}")
                try:
                    value, end = _DECODER.raw_decode(buf, pos)
                except json.JSONDecodeError as e:
                    if not eof:  # the record may go on past the buffer
                        more = f.read(_CHUNK)
                        eof = not more
                        buf = buf[pos:] + more
                        pos = 0
                        continue
                    raise BloomchatError(
                        f"malformed JSON array: {e.msg}", where=f"{path}:{line + buf.count(chr(10), pos, e.pos)}"
                    ) from None
                if buf.find("\\u", pos, end) != -1 and _has_lone_surrogate(value):
                    yield Raw(line, error="invalid UTF-8: a \\uD800-\\uDFFF escape that is not a surrogate pair")
                else:
                    yield Raw(line, value)
                line += buf.count("\n", pos, end)
                pos = end
        except UnicodeDecodeError as e:
            raise BloomchatError(f"invalid UTF-8: {e.reason}", where=str(path)) from None


def _iter_parquet(path: Path) -> Iterator[Raw]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise BloomchatError(f"not a readable parquet file: {e}", where=str(path)) from None
    n = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield Raw(n, row)


def open_records(path: Path) -> Iterator[Raw]:
    """Stream the records of one file (constant memory), each with its line/row number."""
    path = check_file(Path(path))
    fmt = file_format(path)
    if fmt == "parquet":
        return _iter_parquet(path)
    if fmt == "json":
        return _iter_json(path)
    return _iter_jsonl(path)
