"""Desired state at one config revision: plain immutable values.

This is what the xDS translator reads. It holds no ORM objects, so the
translator stays a pure function of it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from controlplane.domain.policy import (
    ModelPolicy,
    VersionPolicy,
    model_policy_from_document,
    version_policy_from_document,
)

__all__ = [
    "DesiredState",
    "EndpointSpec",
    "ModelSpec",
    "TenantSpec",
    "VersionSpec",
    "state_document",
    "state_from_document",
]


# The specs key the translator's memo, so they are hashed on every translation:
# each computes its hash once (a frozen value cannot change) instead of walking
# its whole tree every time.
_HASH = field(default=0, init=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One model-server replica."""

    address: str
    port: int
    zone: str | None = None
    accelerator: str | None = None
    weight: int = 1
    batcher_port: int | None = None
    _hash: int = _HASH

    def __post_init__(self) -> None:
        fields = (self.address, self.port, self.zone, self.accelerator, self.weight)
        object.__setattr__(self, "_hash", hash((*fields, self.batcher_port)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """One version of a model, the replicas that serve it and how they are treated."""

    name: str
    endpoints: tuple[EndpointSpec, ...] = ()
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    _hash: int = _HASH

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.name, self.endpoints, self.policy)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model, its versions (sorted by name), its traffic weights and routing policy."""

    name: str
    protocol: str
    versions: tuple[VersionSpec, ...] = ()
    weights: tuple[tuple[str, int], ...] = ()
    policy: ModelPolicy = field(default_factory=ModelPolicy)
    _hash: int = _HASH

    def __post_init__(self) -> None:
        key = (self.name, self.protocol, self.versions, self.weights, self.policy)
        object.__setattr__(self, "_hash", hash(key))

    def __hash__(self) -> int:
        return self._hash

    def weight_of(self, version: str) -> int:
        """Return the traffic weight of ``version`` (0 when it has none)."""
        return dict(self.weights).get(version, 0)


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """A tenant of inference traffic: its credentials' subject, the models it may
    call, its request rate (a token bucket) and the ids (``jti``) of its revoked
    credentials. Never a credential itself."""

    name: str
    subject: str
    models: tuple[str, ...] = ()
    requests_per_second: int = 10
    burst: int = 20
    revoked: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Everything Envoy must be told, as of config ``revision``; models and tenants
    sorted by name. ``jwks`` is the public JSON Web Key Set that verifies tenant
    credentials (None until the first tenant exists)."""

    revision: int
    models: tuple[ModelSpec, ...] = ()
    tenants: tuple[TenantSpec, ...] = ()
    jwks: str | None = None

    def protected_models(self) -> frozenset[str]:
        """Return the names of the models that some tenant is granted: only tenants
        with a valid credential may call them."""
        return frozenset(model for tenant in self.tenants for model in tenant.models)


def state_document(state: DesiredState) -> dict[str, Any]:
    """Return ``state`` as JSON-compatible data (stored with each config revision).

    The same shape as ``dataclasses.asdict(state)`` (tuples become lists in
    JSON), built by hand because this runs on every change over every model.
    """
    return {
        "revision": state.revision,
        "models": [
            {
                "name": m.name,
                "protocol": m.protocol,
                "versions": [
                    {
                        "name": v.name,
                        "endpoints": [endpoint_document(e) for e in v.endpoints],
                        "policy": _policy_document(v.policy),
                    }
                    for v in m.versions
                ],
                "weights": [[name, weight] for name, weight in m.weights],
                "policy": _policy_document(m.policy),
            }
            for m in state.models
        ],
        "tenants": [
            {
                "name": t.name,
                "subject": t.subject,
                "models": list(t.models),
                "requests_per_second": t.requests_per_second,
                "burst": t.burst,
                "revoked": list(t.revoked),
            }
            for t in state.tenants
        ],
        "jwks": state.jwks,
    }


class EndpointLike(Protocol):
    """An endpoint as a spec or as a stored row: the fields a document records."""

    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def zone(self) -> str | None: ...
    @property
    def accelerator(self) -> str | None: ...
    @property
    def weight(self) -> int: ...
    @property
    def batcher_port(self) -> int | None: ...


def endpoint_document(endpoint: EndpointLike) -> dict[str, Any]:
    """Return the JSON of one endpoint (revision states and audit events share it)."""
    return {
        "address": endpoint.address,
        "port": endpoint.port,
        "zone": endpoint.zone,
        "accelerator": endpoint.accelerator,
        "weight": endpoint.weight,
        "batcher_port": endpoint.batcher_port,
    }


@lru_cache(maxsize=4096)
def _policy_json(policy: ModelPolicy | VersionPolicy) -> str:
    return json.dumps(asdict(policy))


def _policy_document(policy: ModelPolicy | VersionPolicy) -> Any:
    # A fresh copy each time (from cached JSON): documents may be changed by callers.
    return json.loads(_policy_json(policy))


def state_from_document(document: dict[str, Any]) -> DesiredState:
    """Rebuild a DesiredState from :func:`state_document`'s output."""
    return DesiredState(
        revision=int(document["revision"]),
        models=tuple(
            ModelSpec(
                name=m["name"],
                protocol=m["protocol"],
                versions=tuple(
                    VersionSpec(
                        name=v["name"],
                        endpoints=tuple(EndpointSpec(**e) for e in v["endpoints"]),
                        # Documents stored before policies existed have no "policy".
                        policy=version_policy_from_document(v.get("policy")),
                    )
                    for v in m["versions"]
                ),
                weights=tuple((name, int(weight)) for name, weight in m["weights"]),
                policy=model_policy_from_document(m.get("policy")),
            )
            for m in document["models"]
        ),
        # Documents stored before tenants existed have neither "tenants" nor "jwks".
        tenants=tuple(
            TenantSpec(
                name=t["name"],
                subject=t["subject"],
                models=tuple(t["models"]),
                requests_per_second=int(t["requests_per_second"]),
                burst=int(t["burst"]),
                revoked=tuple(t["revoked"]),
            )
            for t in document.get("tenants", ())
        ),
        jwks=document.get("jwks"),
    )
