"""One exception type for problems the user can fix (bad file, bad flag, bad recipe).

The CLI turns a BloomchatError into one line on stderr and exit code 2, never a traceback.
Anything else escaping is a bug in bloomchat and is shown as such.
"""

from __future__ import annotations


class BloomchatError(Exception):
    """A problem with the user's input, named with where it is (file, line, field)."""

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)
