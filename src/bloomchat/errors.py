"""One exception type for problems the user can fix (bad file, bad flag, bad recipe).

The CLI (`run_verb`, used by every entry point) turns a BloomchatError into one line on stderr
and exit code 2, never a traceback.
Anything else escaping is a bug in bloomchat and is shown as such.
"""

from __future__ import annotations

import argparse
import os
import sys


class BloomchatError(Exception):
    """A problem with the user's input, named with where it is (file, line, field)."""

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


def run_verb(args: argparse.Namespace) -> int:
    """Call `args.func(args)`; a BloomchatError becomes one line on stderr and exit 2."""
    try:
        rc = args.func(args)
        return int(rc or 0)
    except BloomchatError as e:
        if os.environ.get("BLOOMCHAT_DEBUG"):
            raise
        print(f"bloomchat {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bloomchat {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bloomchat pack-show ... | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
