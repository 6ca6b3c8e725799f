"""The one exception users see: a bad input, reported on one line with exit code 2.

Anything else that escapes is a bug in the harness and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with something the user gave us (a case, a snapshot, a capture, an argument).

    The message is printed as a single line, prefixed with the file it concerns, so that CI logs
    show the cause without a traceback.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.message = " ".join(str(message).split())
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.path}: {self.message}" if self.path is not None else self.message
