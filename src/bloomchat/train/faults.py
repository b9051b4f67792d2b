"""File-system faults of a run as one line naming the path and the cause (issue #21).

A full disk does not always say so. torch.save reports ENOSPC as a RuntimeError without errno,
"[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534" (seen on a full tmpfs,
torch 2.13); safetensors as a SafetensorError "... I/O error: No space left on device (os error
28)"; plain Python writes as OSError(ENOSPC). `cause` reads the errno when there is one, the
text otherwise, and as a last resort the free space left in the folder being written.
"""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path

from bloomchat.errors import BloomchatError

_ERRNO = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
          errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
          errno.EPERM: "operation not permitted", errno.ENOTDIR: "a part of the path is a file, not a folder"}
_TEXT = {"no space left on device": "no space left on device", "os error 28": "no space left on device",
         "read-only file system": "read-only file system", "permission denied": "permission denied"}
#: torch.save's C++ writer: its failures are write failures whatever the text says.
_TORCH_WRITER = ("inline_container", "pytorchstreamwriter", "file write failed")
#: Free bytes under which a write failure without errno is put down to a full disk.
LOW_SPACE = 1 << 20


def is_write_fault(e: BaseException) -> bool:
    """An error a write can raise for a reason outside bloomchat (full disk, read-only folder)."""
    if isinstance(e, OSError):
        return True
    text = str(e).lower()
    if type(e).__name__ == "SafetensorError":
        return "i/o error" in text or "os error" in text
    return isinstance(e, RuntimeError) and (any(m in text for m in _TORCH_WRITER) or "no space left" in text)


def free_bytes(path: Path) -> int | None:
    """Free space of the file system holding `path` (its nearest existing folder)."""
    p = Path(path)
    while not p.is_dir() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def cause(e: BaseException, path: Path) -> str:
    """The reason of a write fault in a few words."""
    if isinstance(e, OSError) and e.errno in _ERRNO:
        return _ERRNO[e.errno]
    text = str(e).lower()
    for needle, reason in _TEXT.items():
        if needle in text:
            return reason
    free = free_bytes(path)
    if free is not None and free < LOW_SPACE:
        return "no space left on device"
    first = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)).strip().splitlines()
    return first[0] if first else type(e).__name__


def write_fault(what: str, path: Path, e: BaseException, hint: str = "") -> BloomchatError:
    """One line: `PATH: cannot write WHAT (CAUSE)[; HINT]`; the OS's own file name when it gave one."""
    where = getattr(e, "filename", None) or path
    return BloomchatError(f"cannot write {what} ({cause(e, path)}){'; ' + hint if hint else ''}", where=str(where))


def _concerns(e: BaseException, folder: Path) -> bool:
    """The error names no file, a file in `folder`, or a folder on the way to it (mkdir parents)."""
    name = getattr(e, "filename", None)
    if not name:
        return True
    a, b = Path(name).resolve(), Path(folder).resolve()
    return a == b or a in b.parents or b in a.parents


@contextmanager
def writing(what: str, folder: Path, hint: str = ""):
    """Turn a write fault inside `folder` into a BloomchatError; anything else passes unchanged
    (an OSError about another path, e.g. an input file, is not this folder's fault)."""
    try:
        yield
    except BloomchatError:
        raise
    except Exception as e:
        if not (is_write_fault(e) and _concerns(e, folder)):
            raise
        raise write_fault(what, folder, e, hint) from None
