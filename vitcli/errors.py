"""The one exception type for mistakes a user can make.

Library code raises :class:`VitError` with a message that names the problem and the file;
the CLI turns it into one line on stderr and an exit code. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

USAGE = 2  # the command line itself is wrong (bad option value, impossible size)
FAILURE = 1  # the command ran and failed (missing file, corrupt model, ...)


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """'1 step', '2 steps', '1,024 steps'; `nouns` for a plural that is not noun + s
    (plural(1, "class", "classes")). Every count a user reads goes through this: never a
    hedged 'step(s)'. Here, at the bottom of the layers, so that every module can use it."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"


class VitError(Exception):
    """A user-facing error: one readable line, no traceback."""

    def __init__(self, message: str, *, exit_code: int = FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(VitError):
    """A user-facing error about the command line itself (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=USAGE)
