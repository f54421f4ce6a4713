"""User errors and the command-line wrapper every clipcore CLI runs under.

A mistake in what the user gave (a flag, a file, a row, a checkpoint) raises :class:`UserError` (or a subclass,
such as ``data.DataError``) with a message that names the file, row or flag and says how to fix it. The CLIs
(``clipcore.train``, ``.eval``, ``.shards``, ``.partworld``, ``.memory``) run their ``main`` under
:func:`cli`, which prints such an error as one line on stderr and exits with status 2 -- no traceback, since
nothing in the traceback would help the user. Any other exception is a bug in clipcore and keeps its
traceback.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable

USAGE_ERROR = 2   # the exit status argparse uses for a bad command line


class UserError(Exception):
    """Bad input from the user; the message names the file, row or flag and the fix."""


class ConfigError(UserError, ValueError):
    """A flag or option value (or a combination of them) that cannot work; the message names the flag."""


class MissingFileError(UserError, FileNotFoundError):
    """A file named by a flag does not exist; the message names the flag and the path."""


def cli(main: Callable) -> Callable:
    """Decorate a CLI's ``main(argv=None)``: a :class:`UserError` becomes ``<prog>: error: <message>`` and exit 2."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            spec = main.__globals__.get("__spec__")   # under `python -m clipcore.x`, __module__ is "__main__"
            prog = spec.name if spec is not None else main.__module__
            print(f"{prog}: error: {e}", file=sys.stderr)
            raise SystemExit(USAGE_ERROR) from None
    return wrapper
