"""Immutable snapshots of Envoy resources, versioned by content.

A snapshot's version for a type is a hash of that type's resources, so the
same state yields the same version on every replica and after every restart,
different content never shares a version, and a change that leaves a type
untouched leaves its version (and so its stream) alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE

__all__ = [
    "InconsistentSnapshot",
    "PackedResource",
    "Snapshot",
    "UnknownTypeUrl",
    "pack_resource",
]


class UnknownTypeUrl(ValueError):
    """A snapshot was given resources of a type Turnout does not serve."""


class InconsistentSnapshot(ValueError):
    """A snapshot references names it does not define; it must not be published."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Resources by type URL and name, packed once, with a version per type.

    Build with :meth:`from_resources`; do not construct directly.
    """

    revision: int
    resources: Mapping[str, Mapping[str, any_pb2.Any]]
    versions: Mapping[str, str]
    resource_versions: Mapping[str, Mapping[str, str]]
    # The names of each type, made on first use and kept as long as the snapshot.
    _names: dict[str, frozenset[str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # Serialized once, on first use, and shared by every stream sent this snapshot:
    # all of a type's resources as DiscoveryResponse.resources, and each resource
    # as one DeltaDiscoveryResponse.resources entry (controlplane.xds.wire).
    _encoded: dict[str, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)
    _delta_entries: dict[str, dict[str, bytes]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # Differences from other snapshots' versions (the few that streams still hold).
    _differences: dict[tuple[str, int], tuple[Mapping[str, str], Differences]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def from_resources(
        cls, revision: int, resources: Mapping[str, Mapping[str, Message]]
    ) -> Snapshot:
        """Pack ``resources`` and version them; reject unknown type URLs."""
        return cls.from_packed(
            revision,
            {
                type_url: {name: pack_resource(m) for name, m in by_name.items()}
                for type_url, by_name in resources.items()
            },
        )

    @classmethod
    def from_packed(
        cls, revision: int, resources: Mapping[str, Mapping[str, PackedResource]]
    ) -> Snapshot:
        """Version resources packed by :func:`pack_resource`; reject unknown type URLs."""
        unknown = sorted(set(resources) - set(PUSH_ORDER))
        if unknown:
            raise UnknownTypeUrl(f"unknown type URLs: {unknown}")
        packed: dict[str, Mapping[str, any_pb2.Any]] = {}
        versions: dict[str, str] = {}
        resource_versions: dict[str, Mapping[str, str]] = {}
        for type_url in PUSH_ORDER:
            entries = dict(sorted(resources.get(type_url, {}).items()))
            by_name = {name: entry[0] for name, entry in entries.items()}
            hashes = {name: entry[1] for name, entry in entries.items()}
            packed[type_url] = MappingProxyType(by_name)
            versions[type_url] = _version(hashes)
            resource_versions[type_url] = MappingProxyType(hashes)
        return cls(
            revision,
            MappingProxyType(packed),
            MappingProxyType(versions),
            MappingProxyType(resource_versions),
        )

    def version(self, type_url: str) -> str:
        """Return the version string of ``type_url``'s resources."""
        return self.versions[type_url]

    def names(self, type_url: str) -> frozenset[str]:
        """Return the names of a type's resources: one shared set per snapshot, so
        that streams holding "everything" share it instead of keeping a copy each."""
        names = self._names.get(type_url)
        if names is None:
            names = self._names[type_url] = frozenset(self.resources[type_url])
        return names

    def shared(self, type_url: str, names: frozenset[str]) -> frozenset[str]:
        """Return ``names``, or this snapshot's equal set of names (which many streams
        then share) when ``names`` are all of them."""
        every = self.names(type_url)
        return every if names == every else names

    def select(self, type_url: str, names: frozenset[str]) -> list[any_pb2.Any]:
        """Return the resources of a type, all of them for an empty (wildcard) ``names``."""
        by_name = self.resources[type_url]
        if not names:
            return list(by_name.values())
        return [by_name[name] for name in sorted(names) if name in by_name]

    def encoded(self, type_url: str, names: frozenset[str]) -> bytes:
        """Return :meth:`select`'s resources serialized as the ``resources`` field of a
        DiscoveryResponse. All of a type (an empty ``names`` or every name) is one
        bytes object per snapshot, which every stream sending it shares."""
        every = self.names(type_url)
        if names and not (names is every or every <= names):
            selected = self.select(type_url, names)
            subset: bytes = discovery_pb2.DiscoveryResponse(resources=selected).SerializeToString()
            return subset
        encoded = self._encoded.get(type_url)
        if encoded is None:
            encoded = self._encoded[type_url] = discovery_pb2.DiscoveryResponse(
                resources=self.resources[type_url].values()
            ).SerializeToString()
        return encoded

    def differences(self, type_url: str, base: Mapping[str, str]) -> Differences:
        """Return (names whose version here differs from ``base``'s or that ``base``
        lacks, names ``base`` has and this snapshot does not). Computed once per
        ``base`` (another snapshot's ``resource_versions``) and shared by every stream
        that holds it."""
        versions = self.resource_versions[type_url]
        if base is versions:
            return _NO_DIFFERENCES
        key = (type_url, id(base))
        known = self._differences.get(key)
        if known is not None and known[0] is base:
            return known[1]
        changed = frozenset(n for n, v in versions.items() if base.get(n) != v)
        removed = frozenset(n for n in base if n not in versions)
        if len(self._differences) >= _DIFFERENCES_KEPT:
            self._differences.pop(next(iter(self._differences)))
        self._differences[key] = (base, (changed, removed))
        return changed, removed

    def delta_entry(self, type_url: str, name: str) -> bytes:
        """Return resource ``name`` serialized as one entry of a DeltaDiscoveryResponse's
        ``resources`` (name, version and resource): one bytes object per snapshot and
        resource, shared by every delta stream that sends it."""
        entries = self._delta_entries.setdefault(type_url, {})
        entry = entries.get(name)
        if entry is None:
            resource = discovery_pb2.Resource(
                name=name,
                version=self.resource_versions[type_url][name],
                resource=self.resources[type_url][name],
            )
            entry = entries[name] = discovery_pb2.DeltaDiscoveryResponse(
                resources=[resource]
            ).SerializeToString()
        return entry

    def inconsistencies(self) -> list[str]:
        """Return every dangling reference: an empty list means consistent.

        Every EDS cluster needs a ClusterLoadAssignment, every cluster a route
        sends to (weighted, direct or mirrored) needs a Cluster, and every RDS
        name a listener refers to needs a RouteConfiguration.
        """
        problems: list[str] = []
        assignments = self.resources[ENDPOINT]
        versions = self.resource_versions
        for name, packed in self.resources[CLUSTER].items():
            service = _references(CLUSTER, versions[CLUSTER][name], packed, _eds_service)
            if service is not None and (service or name) not in assignments:
                problems.append(
                    f"cluster {name!r} has no ClusterLoadAssignment {service or name!r}"
                )
        clusters = self.resources[CLUSTER]
        for name, packed in self.resources[ROUTE].items():
            referenced = _references(ROUTE, versions[ROUTE][name], packed, _route_clusters)
            for cluster_ref in sorted(c for c in referenced if c not in clusters):
                problems.append(
                    f"RouteConfiguration {name!r} sends to unknown cluster {cluster_ref!r}"
                )
        routes = self.resources[ROUTE]
        for name, packed in self.resources[LISTENER].items():
            for route_name in _references(LISTENER, versions[LISTENER][name], packed, _rds_names):
                if route_name not in routes:
                    problems.append(f"listener {name!r} needs RouteConfiguration {route_name!r}")
        return problems

    def same_names_and_references(self, other: Snapshot) -> bool:
        """Whether this snapshot has the same resource names as ``other`` and the very
        same clusters, listeners and routes (so the same references between them)."""
        return all(
            self.resources[t].keys() == other.resources[t].keys() for t in PUSH_ORDER
        ) and all(self.versions[t] == other.versions[t] for t in (CLUSTER, LISTENER, ROUTE))

    def check_consistent(self) -> Snapshot:
        """Return self, or raise InconsistentSnapshot listing the dangling references."""
        problems = self.inconsistencies()
        if problems:
            raise InconsistentSnapshot("; ".join(problems))
        return self


PackedResource = tuple[any_pb2.Any, str]
Differences = tuple[frozenset[str], frozenset[str]]
_NO_DIFFERENCES: Differences = (frozenset(), frozenset())
_DIFFERENCES_KEPT = 8


def pack_resource(message: Message) -> PackedResource:
    """Return ``message`` packed deterministically, with the hash that versions it."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed, hashlib.sha256(packed.value).hexdigest()[:16]


def _version(hashes: Mapping[str, str]) -> str:
    """A type's version: a hash of its names and their resources' content hashes (each
    a SHA-256 of the packed bytes), not of the megabytes themselves again."""
    digest = hashlib.sha256()
    digest.update("\0".join(f"{name}\0{hashed}" for name, hashed in hashes.items()).encode())
    return digest.hexdigest()[:16]


# What each resource refers to, by its content hash (its resource version): read once,
# not on every publish (unpacking 3,000 clusters and the routes took about 45 ms a
# snapshot at 1,000 models). Cleared when it grows past the bound.
_REFERENCES: dict[tuple[str, str], Any] = {}
_REFERENCES_KEPT = 200_000
_T = TypeVar("_T")


def _references(
    type_url: str, version: str, packed: any_pb2.Any, read: Callable[[any_pb2.Any], _T]
) -> _T:
    key = (type_url, version)
    try:
        found: _T = _REFERENCES[key]
    except KeyError:
        if len(_REFERENCES) >= _REFERENCES_KEPT:
            _REFERENCES.clear()
        found = _REFERENCES[key] = read(packed)
    return found


def _eds_service(packed_cluster: any_pb2.Any) -> str | None:
    """The EDS service name of a cluster ("" for its own name); None: not EDS."""
    cluster = cluster_pb2.Cluster()
    packed_cluster.Unpack(cluster)
    if cluster.type != cluster_pb2.Cluster.EDS:
        return None
    return str(cluster.eds_cluster_config.service_name)


def _rds_names(packed_listener: any_pb2.Any) -> list[str]:
    listener = listener_pb2.Listener()
    packed_listener.Unpack(listener)
    names: list[str] = []
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            if network_filter.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                manager = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(manager)
                if manager.HasField("rds"):
                    names.append(manager.rds.route_config_name)
    return names


def _route_clusters(packed_routes: any_pb2.Any) -> frozenset[str]:
    routes = route_pb2.RouteConfiguration()
    packed_routes.Unpack(routes)
    names: set[str] = set()
    for host in routes.virtual_hosts:
        for route in host.routes:
            if not route.HasField("route"):
                continue
            action = route.route
            if action.cluster:
                names.add(action.cluster)
            names.update(c.name for c in action.weighted_clusters.clusters)
            names.update(m.cluster for m in action.request_mirror_policies if m.cluster)
    return frozenset(names)
