"""The one error type a user sees: a one-line message, exit code 2, no traceback."""

from __future__ import annotations


class NluftError(ValueError):
    """Bad input the user can fix: a config key, a data file line, a CLI argument.

    The message is one line that names the key, file or line and says how to fix it.
    """

    exit_code = 2


class ExampleError(ValueError):
    """A bad example found by a task; the data layer turns it into `NluftError` with file:line.

    `row` is the example's position in the batch or split that was being processed; `token`
    (optional) the offending token, so line-per-token files (CoNLL) can name its exact line.
    """

    def __init__(self, row: int, message: str, token: int | None = None) -> None:
        super().__init__(message)
        self.row = row
        self.message = message
        self.token = token
