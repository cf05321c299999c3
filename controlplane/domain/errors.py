"""Domain errors, raised by services and mapped to HTTP in one place.

Hierarchy::

    TurnoutError              base class; carries a machine-readable ``code``
    ├── NotFound              a named resource does not exist          (404)
    ├── Conflict              the change clashes with existing state   (409)
    └── InvalidInput          well-formed but unacceptable input       (422)
"""

from __future__ import annotations

from typing import Any

__all__ = ["Conflict", "InvalidInput", "NotFound", "TurnoutError"]


class TurnoutError(Exception):
    """Base of every domain error: a stable ``code`` and a human ``detail``."""

    code = "error"

    def __init__(self, detail: Any) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(TurnoutError):
    """The named model, version or other resource does not exist."""

    code = "not_found"


class Conflict(TurnoutError):
    """The change clashes with the current state (a duplicate, a version in use)."""

    code = "conflict"


class InvalidInput(TurnoutError):
    """The input parsed but breaks a rule of the domain (unknown version in weights...)."""

    code = "invalid_input"
