"""The audit log's hash chain and the entries it is built from (pure functions).

Each event's ``hash`` covers the canonical JSON of its fields followed by the
previous event's hash, so editing, deleting, inserting or reordering a stored
event breaks the chain at that position. The first event's ``prev_hash`` is
:data:`GENESIS_HASH`.

Two schemes, recorded per event as ``hash_version`` (:class:`HashScheme`):

1. ``SHA256``: plain SHA-256. Anyone can recompute it, so on its own it only
   shows accidental damage. Events written before migration 0009 use it.
2. ``HMAC_SHA256``: HMAC-SHA256 under the audit key, which lives outside the
   database. Someone who can write the database but lacks the key cannot
   produce a chain that verifies.

The chain records where keyed hashing began (``keyed_from``, the first event id
that must use scheme 2): an event at or after it with scheme 1 is a break, so
history cannot be rewritten with the public function.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any

__all__ = [
    "CHAINED_FIELDS",
    "GENESIS_HASH",
    "ActionContext",
    "AuditAction",
    "AuditEntry",
    "ChainBreak",
    "ChainKey",
    "HashScheme",
    "Outcome",
    "canonical_fields",
    "chain_hash",
    "event_hash",
    "find_break",
    "keyed_chain_hash",
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
    MANIFEST_APPLY = "manifest.apply"
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


class HashScheme(IntEnum):
    """How an event's ``hash`` was computed (its ``hash_version`` column)."""

    SHA256 = 1
    HMAC_SHA256 = 2


@dataclass(frozen=True, slots=True)
class ChainKey:
    """The audit key and where keyed hashing began: events with ids from
    ``keyed_from`` on must be HMAC-SHA256 under ``secret``."""

    secret: bytes
    keyed_from: int

    def __repr__(self) -> str:  # never print the secret
        return f"ChainKey(keyed_from={self.keyed_from})"


def _message(fields: Mapping[str, Any], prev_hash: str) -> bytes:
    canonical = json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return canonical.encode() + b"\n" + prev_hash.encode()


def chain_hash(fields: Mapping[str, Any], prev_hash: str) -> str:
    """Return SHA-256 (hex) over the canonical JSON of ``fields`` and ``prev_hash``
    (scheme 1, :attr:`HashScheme.SHA256`)."""
    return hashlib.sha256(_message(fields, prev_hash)).hexdigest()


def keyed_chain_hash(fields: Mapping[str, Any], prev_hash: str, secret: bytes) -> str:
    """Return HMAC-SHA256 (hex) under ``secret`` over the same message as
    :func:`chain_hash` (scheme 2, :attr:`HashScheme.HMAC_SHA256`)."""
    return hmac.new(secret, _message(fields, prev_hash), hashlib.sha256).hexdigest()


def event_hash(
    fields: Mapping[str, Any], prev_hash: str, scheme: HashScheme, secret: bytes | None
) -> str:
    """Return the hash of an event under ``scheme``; scheme 2 needs ``secret``."""
    if scheme == HashScheme.SHA256:
        return chain_hash(fields, prev_hash)
    if secret is None:
        raise ValueError("HMAC-SHA256 needs the audit key")
    return keyed_chain_hash(fields, prev_hash, secret)


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """Where the chain first breaks: 1-based position in id order, the event id, why."""

    position: int
    event_id: int | None
    reason: str


def _scheme_problem(row: Mapping[str, Any], key: ChainKey | None) -> str | None:
    """Return why ``row``'s hash scheme is not the one its position requires, or None."""
    try:
        scheme = HashScheme(row.get("hash_version") or HashScheme.SHA256)
    except ValueError:
        return f"unknown hash_version {row.get('hash_version')!r}"
    keyed_from = key.keyed_from if key is not None else None
    if keyed_from is None:
        if scheme == HashScheme.HMAC_SHA256:
            return "the event is keyed (HMAC-SHA256) but no audit key was given to verify it"
        return None
    must_be_keyed = int(row["id"]) >= keyed_from
    if must_be_keyed and scheme != HashScheme.HMAC_SHA256:
        return (
            f"the event uses the unkeyed hash but every event from id {keyed_from} on "
            "must be keyed: history was rewritten with the public hash function"
        )
    if not must_be_keyed and scheme != HashScheme.SHA256:
        return f"the event is keyed but keyed hashing began at id {keyed_from}"
    return None


def find_break(
    rows: Iterable[Mapping[str, Any]],
    *,
    start_position: int = 1,
    prev_hash: str = GENESIS_HASH,
    key: ChainKey | None = None,
) -> tuple[ChainBreak | None, int, str, int | None]:
    """Check ``rows`` (in id order) against the chain that ends in ``prev_hash``.

    Without ``key`` only unkeyed (scheme 1) events verify. Return ``(first
    break or None, next position, last hash, last id)`` so a caller can check a
    long log batch by batch.
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
        problem = _scheme_problem(row, key)
        if problem is not None:
            return ChainBreak(position, row.get("id"), problem), position, prev_hash, last_id
        scheme = HashScheme(row.get("hash_version") or HashScheme.SHA256)
        secret = key.secret if key is not None else None
        if not hmac.compare_digest(
            event_hash(canonical_fields(row), prev_hash, scheme, secret), str(row.get("hash"))
        ):
            reason = "the event's content does not match its hash: edited"
            if scheme == HashScheme.HMAC_SHA256:
                reason += " (or the audit key is not the one that wrote it)"
            return ChainBreak(position, row.get("id"), reason), position, prev_hash, last_id
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
