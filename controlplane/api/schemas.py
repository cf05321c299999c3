"""Request and response bodies of the admin API (separate from the ORM models)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from controlplane.domain.addresses import endpoint_address
from controlplane.domain.discovery import (
    NAMESPACE_PATTERN,
    PORT_NAME_PATTERN,
    SERVICE_PATTERN,
    port_name,
)
from controlplane.domain.keys import parse_lifetime
from controlplane.domain.state import EndpointSpec, KubernetesRef

__all__ = [
    "AuditEventOut",
    "AuditPage",
    "AuditVerifyOut",
    "CredentialCreated",
    "CredentialOut",
    "DryRunOut",
    "EndpointIn",
    "EndpointOut",
    "ErrorBody",
    "HeldOut",
    "HistoryEntry",
    "HistoryPage",
    "KeyCreate",
    "KeyCreated",
    "KeyOut",
    "KubernetesIn",
    "KubernetesOut",
    "ModelCreate",
    "ModelOut",
    "ModelPatch",
    "Name",
    "ProxyOut",
    "RateLimit",
    "RevisionDetail",
    "RevisionDiff",
    "RevisionOut",
    "RevisionPage",
    "RollbackOut",
    "TenantCreate",
    "TenantOut",
    "TenantPatch",
    "TrafficIn",
    "TrafficOut",
    "VersionCreate",
    "VersionOut",
    "VersionPatch",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Label = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
Protocol = Literal["openai", "kserve-v2", "http"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """Every error response: a machine-readable code and the details."""

    error: str
    detail: Any = None


class ModelCreate(_Strict):
    """POST /v1/models."""

    name: Name
    protocol: Protocol
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None


class ModelPatch(_Strict):
    """PATCH /v1/models/{model}: the fields to change."""

    protocol: Protocol | None = None
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None


class HeldOut(BaseModel):
    """A model that Envoy rejected: it stays at its last accepted config until it changes."""

    model: str
    type: str = Field(description="the resource type Envoy rejected: clusters, endpoints, ...")
    resources: list[str] = Field(description="the rejected resources of that type")
    reason: str = Field(description="Envoy's error message")
    node: str = Field(description="the proxy that rejected it")
    since: datetime
    confirmed: bool = Field(
        description="false while the model is one of several suspects, tried in turn"
    )


class ModelOut(BaseModel):
    """A model, and whether Envoy serves its desired config (``status``)."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    protocol: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    status: Literal["ok", "degraded"] = Field(
        default="ok",
        description="degraded: Envoy rejected the model's config, which is held at its last "
        "accepted one (see ``degraded``); other models are not affected",
    )
    degraded: list[HeldOut] | None = None


class EndpointIn(_Strict):
    """A model-server replica."""

    address: Annotated[str, AfterValidator(endpoint_address)] = Field(
        description="an IP address, or a DNS name that Envoy resolves (the version then "
        "becomes a DNS cluster: see docs/xds.md)"
    )
    port: int = Field(ge=1, le=65535)
    zone: Label | None = None
    accelerator: Label | None = None
    weight: int = Field(default=1, ge=1, le=128)
    batcher_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="port of the batcher beside this replica (same address); used while "
        "the version's batching policy is enabled",
    )

    def to_spec(self) -> EndpointSpec:
        """Return the domain value of this endpoint."""
        return EndpointSpec(
            address=self.address,
            port=self.port,
            zone=self.zone,
            accelerator=self.accelerator,
            weight=self.weight,
            batcher_port=self.batcher_port,
        )


class EndpointOut(BaseModel):
    """A model-server replica, as stored."""

    model_config = ConfigDict(from_attributes=True)

    address: str
    port: int
    zone: str | None
    accelerator: str | None
    weight: int
    batcher_port: int | None = None


class KubernetesIn(_Strict):
    """A Kubernetes Service whose ready endpoints serve the version (see docs/discovery.md)."""

    namespace: Annotated[str, StringConstraints(pattern=NAMESPACE_PATTERN)]
    service: Annotated[str, StringConstraints(pattern=SERVICE_PATTERN)]
    port: (
        Annotated[int, Field(ge=1, le=65535, strict=True)]
        | Annotated[str, StringConstraints(pattern=PORT_NAME_PATTERN), AfterValidator(port_name)]
    ) = Field(
        description="the name of a port of the Service's EndpointSlices (e.g. http), or "
        "the port number the endpoints listen on"
    )

    def to_ref(self) -> KubernetesRef:
        """Return the domain value of this reference."""
        return KubernetesRef(namespace=self.namespace, service=self.service, port=self.port)


class VersionCreate(_Strict):
    """POST /v1/models/{model}/versions: its endpoints, or the Kubernetes Service
    whose endpoints are discovered (not both)."""

    version: Name
    endpoints: list[EndpointIn] = Field(default_factory=list, max_length=1000)
    kubernetes: KubernetesIn | None = None

    @model_validator(mode="after")
    def _one_source(self) -> VersionCreate:
        if self.endpoints and self.kubernetes is not None:
            raise ValueError("a version lists endpoints or names a kubernetes Service, not both")
        return self


class VersionPatch(_Strict):
    """PATCH /v1/models/{model}/versions/{version}: replaces the endpoint list, or
    the Kubernetes Service (exactly one of the two; the other is cleared)."""

    endpoints: list[EndpointIn] | None = Field(default=None, max_length=1000)
    kubernetes: KubernetesIn | None = None

    @model_validator(mode="after")
    def _one_source(self) -> VersionPatch:
        if (self.endpoints is None) == (self.kubernetes is None):
            raise ValueError("give either endpoints or kubernetes (a Service), exactly one")
        return self


class KubernetesOut(BaseModel):
    """The Kubernetes Service a version's endpoints are discovered from."""

    namespace: str
    service: str
    port: int | str


class VersionOut(BaseModel):
    """A version of a model and its endpoints."""

    model: str
    version: str
    endpoints: list[EndpointOut]
    kubernetes: KubernetesOut | None = Field(
        default=None,
        description="the Service whose ready endpoints serve this version (null: the "
        "endpoints above are listed)",
    )
    discovered: list[EndpointOut] | None = Field(
        default=None,
        description="read-only: the endpoints discovered for the Service now, which Envoy "
        "gets (null for a version that lists its endpoints)",
    )
    batching: dict[str, Any] | None = Field(
        default=None,
        description="the version's batching policy, which its batchers poll "
        "(null: no batching; set it with PUT .../policy)",
    )
    created_at: datetime
    updated_at: datetime


class TrafficIn(_Strict):
    """PUT /v1/models/{model}/traffic: percentages that add up to 100."""

    weights: dict[Name, int] = Field(min_length=1)


class TrafficOut(BaseModel):
    """The traffic split of a model: every version with its weight."""

    model: str
    weights: dict[str, int]


class TypeStatusOut(BaseModel):
    """One resource type on one proxy."""

    status: str
    sent_version: str | None
    acked_version: str | None
    current_version: str | None
    error: str | None
    sent_at: datetime | None
    acked_at: datetime | None
    held: list[HeldOut] = Field(
        default_factory=list,
        description="models whose resources of this type are held back, and why",
    )


class ProxyOut(BaseModel):
    """A connected Envoy and its sync state per resource type."""

    node_id: str
    cluster: str
    zone: str
    xds: str = Field(description="sotw (state of the world) or delta (incremental)")
    connected_at: datetime
    degraded: bool = Field(
        default=False, description="some model is held at its last accepted config"
    )
    revision: int | None = Field(
        description="the config revision of the snapshot this replica serves the proxy, "
        "which each type's status compares against (None before the state is loaded)"
    )
    synced_revision: int | None = Field(
        description="that revision once the proxy has ACKed all of it (every type "
        "SYNCED), else None: a change is in force on this proxy when this is at or "
        "after the revision the change created"
    )
    types: dict[str, TypeStatusOut]


class AuditEventOut(BaseModel):
    """One audit event: who did what, from where, how it ended, and its chain hashes."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    actor: str
    actor_id: int | None
    role: str | None
    action: str
    resource_type: str
    resource_id: str
    model: str | None
    version: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    revision: int | None
    source_ip: str | None
    user_agent: str | None
    outcome: str
    status_code: int | None
    prev_hash: str | None
    hash: str | None


class AuditPage(BaseModel):
    """A page of audit events, newest first; pass ``next_cursor`` to get the next."""

    items: list[AuditEventOut]
    next_cursor: str | None


class RevisionOut(BaseModel):
    """One committed config revision."""

    model_config = ConfigDict(from_attributes=True)

    revision: int
    created_at: datetime
    actor: str
    action: str
    request_id: str | None


class RevisionDetail(RevisionOut):
    """A revision with the desired state it left behind."""

    state: dict[str, Any] | None


class RevisionPage(BaseModel):
    """Revisions, newest first; pass ``next_cursor`` to get the next page."""

    items: list[RevisionOut]
    next_cursor: str | None


class ResourceChanges(BaseModel):
    """Envoy resources of one type that a change adds, removes or alters."""

    added: list[str]
    removed: list[str]
    changed: list[str]


class TenantChanges(BaseModel):
    """Tenants that a change adds, removes or alters (with both sides)."""

    added: list[str]
    removed: list[str]
    changed: dict[str, dict[str, Any]]


class StateChanges(BaseModel):
    """What differs between two whole states: models added, removed or altered (with
    both sides), the same for tenants, and whether the credential key set changed.
    All empty means the states, and so Envoy's resources, are equal."""

    added: list[str]
    removed: list[str]
    changed: dict[str, dict[str, Any]]
    tenants: TenantChanges
    key_set_changed: bool


class RevisionDiff(BaseModel):
    """What changed from one revision to another, in desired state and in Envoy."""

    from_revision: int = Field(alias="from")
    to_revision: int = Field(alias="to")
    state: StateChanges
    resources: dict[str, ResourceChanges]

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class DryRunOut(BaseModel):
    """What a mutating call would do, without doing it (``?dry_run=true``)."""

    dry_run: bool = True
    revision: int | None = Field(
        description="the revision the change would have created (None: no config change)"
    )
    state: StateChanges
    resources: dict[str, ResourceChanges]


class RollbackOut(BaseModel):
    """The new revision that restores an earlier one's state."""

    revision: int
    restored: int


class AuditVerifyOut(BaseModel):
    """The audit chain, recomputed: ``ok``, or where it first breaks and why."""

    ok: bool
    checked: int = Field(description="events verified before the first break (or all of them)")
    head_id: int = Field(description="the newest event id the chain head records")
    first_broken_position: int | None = Field(
        description="1-based position, in id order, of the first event that fails"
    )
    first_broken_id: int | None
    reason: str | None


class HistoryEntry(BaseModel):
    """One successful change to a model, its versions or its traffic: who and when."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    actor: str
    role: str | None
    action: str
    resource_type: str
    resource_id: str
    version: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    revision: int | None


class HistoryPage(BaseModel):
    """A page of a model's history, newest first."""

    items: list[HistoryEntry]
    next_cursor: str | None


KeyRole = Literal["viewer", "operator", "admin", "auditor"]


def _lifetime(value: str) -> str:
    parse_lifetime(value)
    return value


class KeyCreate(_Strict):
    """POST /v1/keys."""

    name: Name
    role: KeyRole
    expires_in: (
        Annotated[str, StringConstraints(max_length=16), AfterValidator(_lifetime)] | None
    ) = Field(
        default=None,
        description="lifetime, as a number and m, h, d or w (for example 30d); "
        "null: the key never expires",
    )


class KeyOut(BaseModel):
    """An API key as stored: never the key itself."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: KeyRole
    prefix: str = Field(description="the key's first characters, to recognise it")
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    expires_at: datetime | None = Field(description="when the key stops working; null: never")


class KeyCreated(KeyOut):
    """A new key. ``key`` is shown this once (null when an Idempotency-Key replays it)."""

    key: str | None


class RateLimit(_Strict):
    """A tenant's token bucket in Envoy: refilled at ``requests_per_second``, holding
    at most ``burst`` requests."""

    requests_per_second: int = Field(ge=1, le=1_000_000)
    burst: int = Field(ge=1, le=1_000_000)


class TenantCreate(_Strict):
    """POST /v1/tenants."""

    name: Name
    models: list[Name] = Field(
        default_factory=list,
        max_length=1000,
        description="models the tenant may call; naming a model makes it tenants-only",
    )
    rate_limit: RateLimit


class TenantPatch(_Strict):
    """PATCH /v1/tenants/{tenant}: replace the models and/or the rate limit."""

    models: list[Name] | None = Field(default=None, max_length=1000)
    rate_limit: RateLimit | None = None


class TenantOut(BaseModel):
    """A tenant: the models it may call and its rate limit."""

    name: str
    models: list[str]
    rate_limit: RateLimit
    created_at: datetime
    updated_at: datetime


class CredentialOut(BaseModel):
    """A tenant credential as stored: its id (``jti``), never the token."""

    id: int
    tenant: str
    jti: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None


class CredentialCreated(CredentialOut):
    """A new credential. ``token`` (a JWT for ``Authorization: Bearer``) is shown this
    once (null when an Idempotency-Key replays it)."""

    token: str | None
