"""The audit log's hash chain and the entries it is built from (pure functions).

Each event's ``hash`` is SHA-256 over the canonical JSON of its fields followed
by the previous event's hash, so editing, deleting, inserting or reordering a
stored event breaks the chain at that position. The first event's
``prev_hash`` is :data:`GENESIS_HASH`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "CHAINED_FIELDS",
    "GENESIS_HASH",
    "ActionContext",
    "AuditAction",
    "AuditEntry",
    "ChainBreak",
    "Outcome",
    "canonical_fields",
    "chain_hash",
    "find_break",
]

GENESIS_HASH = "0" * 64

# The fields the hash covers, in a fixed order (the JSON is also key-sorted).
CHAINED_FIELDS = (
    "id",
    "created_at",
    "actor",
    "actor_id",
    "role",
    "action",
    "resource_type",
    "resource_id",
    "model",
    "version",
    "before",
    "after",
    "request_id",
    "revision",
    "source_ip",
    "user_agent",
    "outcome",
    "status_code",
)


class AuditAction(StrEnum):
    """Every change the admin API makes, as its audit events name it."""

    MODEL_CREATE = "model.create"
    MODEL_UPDATE = "model.update"
    MODEL_DELETE = "model.delete"
    VERSION_CREATE = "version.create"
    VERSION_UPDATE = "version.update"
    VERSION_DELETE = "version.delete"
    TRAFFIC_UPDATE = "traffic.update"
    MODEL_POLICY_UPDATE = "model.policy.update"
    VERSION_POLICY_UPDATE = "version.policy.update"
    REVISION_ROLLBACK = "revision.rollback"
    KEY_CREATE = "key.create"
    KEY_REVOKE = "key.revoke"
    TENANT_CREATE = "tenant.create"
    TENANT_UPDATE = "tenant.update"
    TENANT_DELETE = "tenant.delete"
    CREDENTIAL_CREATE = "tenant.credential.create"
    CREDENTIAL_REVOKE = "tenant.credential.revoke"


class Outcome:
    """The outcome values an audit event carries."""

    SUCCESS = "success"
    REJECTED = "rejected"  # the request was refused: bad input, conflict, stale If-Match
    DENIED = "denied"  # no valid key (401) or a role without the permission (403)
    REPLAYED = "replayed"  # an Idempotency-Key replay: nothing changed
    ERROR = "error"  # the server failed (5xx); nothing changed
    DRY_RUN = "dry_run"  # ?dry_run=true: the change was computed, then rolled back

    ALL = (SUCCESS, REJECTED, DENIED, REPLAYED, ERROR, DRY_RUN)

    @staticmethod
    def for_status(status_code: int) -> str:
        """Return the outcome of a request that ended with ``status_code``."""
        if status_code < 400:
            return Outcome.SUCCESS
        if status_code in (401, 403):
            return Outcome.DENIED
        if status_code < 500:
            return Outcome.REJECTED
        return Outcome.ERROR


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One event to append: who did what to which resource, and how it ended."""

    actor: str
    action: str
    resource_type: str
    resource_id: str
    outcome: str = Outcome.SUCCESS
    status_code: int | None = None
    actor_id: int | None = None
    role: str | None = None
    model: str | None = None
    version: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    request_id: str | None = None
    revision: int | None = None
    source_ip: str | None = None
    user_agent: str | None = None


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value


def canonical_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """Return the chained fields of ``event`` (a row mapping) as JSON-ready values."""
    return {name: _json_value(event.get(name)) for name in CHAINED_FIELDS}


def chain_hash(fields: Mapping[str, Any], prev_hash: str) -> str:
    """Return SHA-256 (hex) over the canonical JSON of ``fields`` and ``prev_hash``."""
    canonical = json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return hashlib.sha256(canonical.encode() + b"\n" + prev_hash.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """Where the chain first breaks: 1-based position in id order, the event id, why."""

    position: int
    event_id: int | None
    reason: str


def find_break(
    rows: Iterable[Mapping[str, Any]], *, start_position: int = 1, prev_hash: str = GENESIS_HASH
) -> tuple[ChainBreak | None, int, str, int | None]:
    """Check ``rows`` (in id order) against the chain that ends in ``prev_hash``.

    Return ``(first break or None, next position, last hash, last id)`` so a
    caller can check a long log batch by batch.
    """
    position, last_id = start_position, None
    for row in rows:
        if row.get("prev_hash") != prev_hash:
            return (
                ChainBreak(
                    position,
                    row.get("id"),
                    "prev_hash does not match the previous event: "
                    "an event was deleted, inserted or reordered here",
                ),
                position,
                prev_hash,
                last_id,
            )
        if chain_hash(canonical_fields(row), prev_hash) != row.get("hash"):
            return (
                ChainBreak(
                    position, row.get("id"), "the event's content does not match its hash: edited"
                ),
                position,
                prev_hash,
                last_id,
            )
        prev_hash = str(row["hash"])
        last_id = int(row["id"])
        position += 1
    return None, position, prev_hash, last_id


@dataclass(frozen=True, slots=True)
class ActionContext:
    """Who asked for a change, and the request it came with (for the audit log)."""

    actor: str = "anonymous"
    request_id: str | None = None
    actor_id: int | None = None
    role: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    status_code: int | None = None

    def entry(
        self,
        action: str,
        resource_type: str,
        resource_id: str,
        *,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        model: str | None = None,
        version: str | None = None,
        revision: int | None = None,
        outcome: str = Outcome.SUCCESS,
        status_code: int | None = None,
    ) -> AuditEntry:
        """Return the audit entry of ``action`` by this caller."""
        return AuditEntry(
            actor=self.actor,
            actor_id=self.actor_id,
            role=self.role,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            model=model,
            version=version,
            before=before,
            after=after,
            request_id=self.request_id,
            revision=revision,
            source_ip=self.source_ip,
            user_agent=self.user_agent,
            outcome=outcome,
            status_code=status_code if status_code is not None else self.status_code,
        )
