"""Endpoints discovered from Kubernetes EndpointSlices: observed state, not desired.

A version may name a Kubernetes Service (:class:`KubernetesRef`) instead of
listing its endpoints. The control plane watches that Service's EndpointSlices
(``discovery.k8s.io/v1``) and keeps, per Service, the endpoints that may take
traffic (:func:`endpoints_of_slices`). Before translation those are merged into
the desired state (:func:`with_discovered`): the version gets one endpoint per
discovered address, on the port its reference names, in the slice's zone.
Discovered endpoints change without a revision or an audit event.

Which endpoints take traffic:

- an endpoint whose ``conditions.ready`` is true (or unset, which the API says
  to read as ready);
- when none of a Service's endpoints is ready, those that are ``serving``
  while terminating (as kube-proxy does), so that a Service being replaced
  keeps answering until its successors are ready;
- never one whose address type is FQDN, nor a port that is not TCP.

This module is pure: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from controlplane.domain.state import DesiredState, EndpointSpec, KubernetesRef, ModelSpec

__all__ = [
    "NAMESPACE_PATTERN",
    "PORT_NAME_PATTERN",
    "SERVICE_PATTERN",
    "DiscoveredEndpoint",
    "Discovery",
    "ServiceKey",
    "decode_discovered",
    "encode_discovered",
    "endpoints_of_slices",
    "port_name",
    "referenced_services",
    "resolve",
    "with_discovered",
]

# A namespace is a DNS-1123 label, a Service name a DNS-1035 label, a port name an
# IANA service name (at most 15 characters, at least one letter).
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
SERVICE_PATTERN = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
PORT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$"
ZONE_LABEL = "topology.kubernetes.io/zone"

ServiceKey = tuple[str, str]  # (namespace, service)


def port_name(value: str) -> str:
    """Return ``value`` when it is a port name (PORT_NAME_PATTERN with a letter in
    it, so never a number); raise ValueError otherwise."""
    if not any(c.isalpha() for c in value):
        raise ValueError("a port name has a letter in it; give a port number as a number")
    return value


@dataclass(frozen=True, slots=True)
class DiscoveredEndpoint:
    """One address of a Service that may take traffic, its zone and its ports by
    name (an unnamed port has the name "")."""

    address: str
    zone: str | None = None
    ports: tuple[tuple[str, int], ...] = ()

    def port(self, wanted: str | int) -> int | None:
        """Return the port ``wanted`` names (a number is used as it is), or None."""
        if isinstance(wanted, int):
            return wanted
        return dict(self.ports).get(wanted)


Discovery = Mapping[ServiceKey, tuple[DiscoveredEndpoint, ...]]


def encode_discovered(endpoints: Iterable[DiscoveredEndpoint]) -> list[dict[str, Any]]:
    """Return the stored document of a Service's discovered endpoints."""
    return [
        {"address": e.address, "zone": e.zone, "ports": [[name, port] for name, port in e.ports]}
        for e in endpoints
    ]


def decode_discovered(document: Iterable[Mapping[str, Any]]) -> tuple[DiscoveredEndpoint, ...]:
    """Return the endpoints of :func:`encode_discovered`'s document."""
    return tuple(
        DiscoveredEndpoint(
            address=str(e["address"]),
            zone=e.get("zone"),
            ports=tuple((str(name), int(port)) for name, port in e.get("ports", ())),
        )
        for e in document
    )


def _zone(endpoint: Mapping[str, Any]) -> str | None:
    zone = endpoint.get("zone")
    if zone:
        return str(zone)
    # Before discovery.k8s.io/v1 the zone was a topology label.
    for key in ("deprecatedTopology", "topology"):
        labels = endpoint.get(key) or {}
        if labels.get(ZONE_LABEL):
            return str(labels[ZONE_LABEL])
    return None


def _address(endpoint: Mapping[str, Any]) -> str | None:
    """The endpoint's first address (the API says the others are fungible), when it
    is an IP address."""
    for address in endpoint.get("addresses") or ():
        try:
            return str(ipaddress.ip_address(address))
        except ValueError:
            return None
    return None


def _ports(slice_: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    ports: dict[str, int] = {}
    for port in slice_.get("ports") or ():
        number = port.get("port")
        if number is None or port.get("protocol", "TCP") not in (None, "TCP"):
            continue
        ports.setdefault(str(port.get("name") or ""), int(number))
    return tuple(sorted(ports.items()))


def endpoints_of_slices(slices: Iterable[Mapping[str, Any]]) -> tuple[DiscoveredEndpoint, ...]:
    """Return the endpoints of one Service's EndpointSlices (API objects as JSON)
    that may take traffic, sorted by address (see the module's rules)."""
    ready: dict[tuple[str, tuple[tuple[str, int], ...]], DiscoveredEndpoint] = {}
    serving: dict[tuple[str, tuple[tuple[str, int], ...]], DiscoveredEndpoint] = {}
    for slice_ in slices:
        if slice_.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue
        ports = _ports(slice_)
        for endpoint in slice_.get("endpoints") or ():
            address = _address(endpoint)
            if address is None:
                continue
            conditions = endpoint.get("conditions") or {}
            is_ready = conditions.get("ready") is not False  # unset reads as ready
            is_serving = conditions.get("serving", conditions.get("ready")) is not False
            terminating = conditions.get("terminating") is True
            target = ready if is_ready and not terminating else None
            if target is None and is_serving and terminating:
                target = serving
            if target is None:
                continue
            # The same address in two slices (while they change) is one endpoint
            # when its ports agree; with other ports it is another.
            target[(address, ports)] = DiscoveredEndpoint(address, _zone(endpoint), ports)
    chosen = ready or serving
    return tuple(chosen[key] for key in sorted(chosen))


def resolve(
    ref: KubernetesRef, discovered: tuple[DiscoveredEndpoint, ...]
) -> tuple[EndpointSpec, ...]:
    """Return the endpoints a version referring to ``ref`` gets from ``discovered``:
    those that have the named port, sorted by address and port."""
    endpoints: dict[tuple[str, int], EndpointSpec] = {}
    for found in discovered:
        port = found.port(ref.port)
        if port is not None:
            endpoints.setdefault(
                (found.address, port),
                EndpointSpec(address=found.address, port=port, zone=found.zone),
            )
    return tuple(endpoints[key] for key in sorted(endpoints))


def referenced_services(state: DesiredState) -> frozenset[ServiceKey]:
    """Return the Services (namespace, name) that some version of ``state`` names."""
    return frozenset(
        (version.kubernetes.namespace, version.kubernetes.service)
        for model in state.models
        for version in model.versions
        if version.kubernetes is not None
    )


def with_discovered(state: DesiredState, discovery: Discovery) -> DesiredState:
    """Return ``state`` with every version that names a Service given that Service's
    discovered endpoints (none while nothing is discovered), the rest as it was."""
    changed: dict[str, ModelSpec | None] = {}
    for model in state.models:
        if not any(v.kubernetes is not None for v in model.versions):
            continue
        versions = tuple(
            replace(
                version,
                endpoints=resolve(
                    version.kubernetes,
                    discovery.get((version.kubernetes.namespace, version.kubernetes.service), ()),
                ),
            )
            if version.kubernetes is not None
            else version
            for version in model.versions
        )
        changed[model.name] = replace(model, versions=versions)
    if not changed:
        return state
    return state.with_models(state.revision, changed)
