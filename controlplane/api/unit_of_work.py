"""The unit of work of one mutating request, and how routes declare their audit.

The gateway (:mod:`controlplane.api.gateway`) opens one :class:`UnitOfWork`
per mutating request: it owns the transaction, the idempotency check, the one
audit event and the dry run. Routes declare what their audit events record
with :func:`audited`; a dry run is the ``dry_run`` flag of the unit of work,
parsed strictly from ``?dry_run=`` before the route runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.domain.audit import AuditAction
from controlplane.domain.errors import InvalidInput
from controlplane.domain.keys import Principal

__all__ = ["Audited", "UnitOfWork", "audited", "audited_of", "parse_dry_run"]

F = TypeVar("F", bound=Callable[..., Any])
_ATTRIBUTE = "__turnout_audited__"
_TRUE = ("true", "1")
_FALSE = ("false", "0")


@dataclass(frozen=True, slots=True)
class Audited:
    """What a route's audit events record: the action and resource type, which
    body fields name a resource the request creates, and which response fields
    hold a secret (never stored for an idempotent replay)."""

    action: AuditAction
    resource_type: str
    model_field: str | None = None
    version_field: str | None = None
    id_field: str | None = None
    secrets: tuple[str, ...] = ()


def audited(
    action: AuditAction,
    resource_type: str,
    *,
    model_field: str | None = None,
    version_field: str | None = None,
    id_field: str | None = None,
    secrets: tuple[str, ...] = (),
) -> Callable[[F], F]:
    """Declare the audit action of a mutating route (decorate the route function,
    under the router's decorator)."""
    declared = Audited(action, resource_type, model_field, version_field, id_field, secrets)

    def mark(function: F) -> F:
        setattr(function, _ATTRIBUTE, declared)
        return function

    return mark


def audited_of(endpoint: object) -> Audited | None:
    """Return what ``endpoint`` declared with :func:`audited`, or None."""
    value = getattr(endpoint, _ATTRIBUTE, None)
    return value if isinstance(value, Audited) else None


def parse_dry_run(query: dict[str, list[str]]) -> bool:
    """Return whether a change is a dry run; raise InvalidInput for any query
    parameter other than ``dry_run`` (a misspelling must not change the state for
    real) or a ``dry_run`` value other than true, false, 1 or 0."""
    unknown = sorted(name for name in query if name != "dry_run")
    if unknown:
        raise InvalidInput(
            {
                "message": f"a change takes no query parameter {unknown}; did you mean dry_run?",
                "parameters": unknown,
            }
        )
    values = query.get("dry_run", [])
    if not values:
        return False
    if len(values) > 1:
        raise InvalidInput({"message": "give dry_run once", "parameter": "dry_run"})
    value = values[0].lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidInput(
        {
            "message": f"dry_run must be true, false, 1 or 0, not {values[0]!r}",
            "parameter": "dry_run",
        }
    )


@dataclass
class UnitOfWork:
    """One mutating request's transaction, caller and dry-run flag."""

    session: AsyncSession
    principal: Principal | None
    dry_run: bool = False
