"""The one exception type for mistakes a user can make.

Library code raises :class:`VitError` with a message that names the problem and the file;
the CLI turns it into one line on stderr and an exit code. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

USAGE = 2  # the command line itself is wrong (bad option value, impossible size)
FAILURE = 1  # the command ran and failed (missing file, corrupt model, ...)


class VitError(Exception):
    """A user-facing error: one readable line, no traceback."""

    def __init__(self, message: str, *, exit_code: int = FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(VitError):
    """A user-facing error about the command line itself (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=USAGE)
