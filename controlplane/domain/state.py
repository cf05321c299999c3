"""Desired state at one config revision: plain immutable values.

This is what the xDS translator reads. It holds no ORM objects, so the
translator stays a pure function of it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DesiredState", "EndpointSpec", "ModelSpec", "VersionSpec"]


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One model-server replica."""

    address: str
    port: int
    zone: str | None = None
    accelerator: str | None = None
    weight: int = 1


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """One version of a model and the replicas that serve it."""

    name: str
    endpoints: tuple[EndpointSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model, its versions (sorted by name) and its traffic weights."""

    name: str
    protocol: str
    versions: tuple[VersionSpec, ...] = ()
    weights: tuple[tuple[str, int], ...] = ()

    def weight_of(self, version: str) -> int:
        """Return the traffic weight of ``version`` (0 when it has none)."""
        return dict(self.weights).get(version, 0)


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Everything Envoy must be told, as of config ``revision``; models sorted by name."""

    revision: int
    models: tuple[ModelSpec, ...] = ()
