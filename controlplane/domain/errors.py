"""Domain errors, raised by services and mapped to HTTP in one place.

Hierarchy::

    TurnoutError              base class; carries a machine-readable ``code``
    ├── Unauthenticated       no key, or an unknown or revoked one     (401)
    ├── PermissionDenied      the key's role lacks the permission      (403)
    ├── NotFound              a named resource does not exist          (404)
    ├── Conflict              the change clashes with existing state   (409)
    │   └── RolloutActive     a progressing rollout owns the model's traffic
    ├── PreconditionFailed    If-Match names a state that is gone      (412)
    └── InvalidInput          well-formed but unacceptable input       (422)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Conflict",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "PreconditionFailed",
    "RolloutActive",
    "TurnoutError",
    "Unauthenticated",
]


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


class RolloutActive(Conflict):
    """A progressing rollout owns the model's traffic: pause or abort it first."""

    code = "rollout_active"


class InvalidInput(TurnoutError):
    """The input parsed but breaks a rule of the domain (unknown version in weights...)."""

    code = "invalid_input"


class Unauthenticated(TurnoutError):
    """No API key, or one that is malformed, unknown or revoked."""

    code = "unauthenticated"


class PermissionDenied(TurnoutError):
    """The key is valid but its role does not grant what the route needs."""

    code = "permission_denied"


class PreconditionFailed(TurnoutError):
    """``If-Match`` names a version of the resource that is no longer current."""

    code = "precondition_failed"
