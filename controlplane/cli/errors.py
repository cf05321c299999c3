"""What the CLI says about an error: one line, never SQL, parameters or secrets.

SQLAlchemy's messages carry the statement and its parameters (a key's hash among
them); only the database driver's own first line is kept. Every other error is
its type and the first line of its message.
"""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError

__all__ = ["CliError", "describe_error"]

_MAX = 300


class CliError(Exception):
    """A failure the user can fix: its message says how. The CLI prints it as one
    line and exits with status 2, with no traceback."""


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _MAX else line[: _MAX - 3] + "..."


def describe_error(exc: BaseException) -> str:
    """Return one line about ``exc`` that is safe to print and to log."""
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        problems = "; ".join(
            f"TURNOUT_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()[:3]
        )
        return f"bad setting: {problems}"
    if isinstance(exc, StatementError):
        cause = exc.orig if exc.orig is not None else exc.__cause__
        message = _first_line(str(cause)) if cause is not None else ""
        # asyncpg's errors arrive as "<class '...UndefinedTableError'>: relation ...".
        _, marker, rest = message.partition("'>: ")
        message = rest if marker else message
        kind = "database error" if isinstance(exc, DBAPIError) else "database statement failed"
        return f"{kind}: {message or type(cause).__name__}"
    if isinstance(exc, SQLAlchemyError):
        return f"database error: {_first_line(str(exc).split('(Background on this error', 1)[0])}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    message = _first_line(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
