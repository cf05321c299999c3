"""Desired state at one config revision: plain immutable values.

This is what the xDS translator reads. It holds no ORM objects, so the
translator stays a pure function of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from controlplane.domain.policy import ModelPolicy, VersionPolicy

__all__ = [
    "CommittedChange",
    "DesiredState",
    "EndpointSpec",
    "KubernetesRef",
    "ModelSpec",
    "TenantSpec",
    "VersionSpec",
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
class KubernetesRef:
    """A Kubernetes Service whose ready endpoints serve a version, found by watching
    its EndpointSlices; ``port`` is the name of one of the slices' ports, or the
    port number the endpoints listen on."""

    namespace: str
    service: str
    port: str | int


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """One version of a model, the replicas that serve it and how they are treated.

    A version lists its ``endpoints`` or names a Kubernetes Service (``kubernetes``)
    whose endpoints are discovered; the desired state never holds both."""

    name: str
    endpoints: tuple[EndpointSpec, ...] = ()
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    kubernetes: KubernetesRef | None = None
    _hash: int = _HASH

    def __post_init__(self) -> None:
        key = (self.name, self.endpoints, self.policy, self.kubernetes)
        object.__setattr__(self, "_hash", hash(key))

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

    def model(self, name: str) -> ModelSpec | None:
        """Return the model called ``name``, or None."""
        for model in self.models:
            if model.name == name:
                return model
        return None

    def with_models(self, revision: int, changed: dict[str, ModelSpec | None]) -> DesiredState:
        """Return this state at ``revision`` with the ``changed`` models replaced
        (None: deleted), everything else as it was."""
        models = {model.name: model for model in self.models}
        for name, spec in changed.items():
            if spec is None:
                models.pop(name, None)
            else:
                models[name] = spec
        return replace(self, revision=revision, models=tuple(models[n] for n in sorted(models)))

    def traffic(self) -> DesiredState:
        """Return the traffic half of this state (models only, no access state)."""
        return DesiredState(revision=self.revision, models=self.models)


@dataclass(frozen=True)
class CommittedChange:
    """What one revision changed, as its writer read it inside the transaction that
    committed it: the specs of the models it touched (None: deleted) and, when it
    touched the access state, the tenants and JWKS it left. Applied to the state
    at ``revision - 1`` it gives the state at ``revision``, the same state a read
    of the tables at ``revision`` gives (``controlplane.sync`` relies on this).
    """

    revision: int
    models: Mapping[str, ModelSpec | None]
    access: tuple[tuple[TenantSpec, ...], str | None] | None
    committed_at: datetime

    def apply(self, state: DesiredState) -> DesiredState:
        """Return ``state`` (at ``revision - 1``) moved to this revision."""
        if state.revision != self.revision - 1:
            raise ValueError(
                f"revision {self.revision} applies to revision {self.revision - 1}, "
                f"not {state.revision}"
            )
        moved = state.with_models(self.revision, dict(self.models))
        if self.access is not None:
            tenants, jwks = self.access
            moved = replace(moved, tenants=tenants, jwks=jwks)
        return moved
