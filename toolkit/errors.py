"""The one error type the CLI turns into a clean line and an exit code."""

from __future__ import annotations

# Exit codes shared by every command.
EXIT_FAIL = 1  # the check, reconciliation or step found a problem
EXIT_USAGE = 2  # bad input, connection error, database not in the expected state


class KeyshiftError(Exception):
    """A failure the operator can act on: one line, no traceback.

    `message` says what went wrong, where, and what to do; `exit_code` is 1 for
    a failed check or step and 2 for usage or connection errors.
    """

    def __init__(self, message: str, exit_code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(KeyshiftError):
    """Bad input from the operator: a value, a name, a file (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)
