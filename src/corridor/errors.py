"""Errors that reach the user.

A `UserError` is the user's mistake or a missing prerequisite: the CLI prints its
message (and hint) on one line each and exits 2, never with a traceback. Anything
else that escapes is our bug and is shown as one.
"""

from __future__ import annotations

EXIT_USAGE = 2


class UserError(Exception):
    """A mistake the user can fix: bad flag, bad policy file, missing tool."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"
