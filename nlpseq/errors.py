"""The one exception type users see: a message that names the file and line at fault."""

from __future__ import annotations

from pathlib import Path


class NlpseqError(Exception):
    """Bad input or configuration; printed by the CLI as one line ``path:line: message``."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path + (f":{self.line}" if self.line is not None else "") + ": "
        return where + self.message
