"""Incremental (delta) aggregated discovery (ADS) for one stream, without gRPC.

The same rules as state-of-the-world (see ``sotw``), in delta's terms, from
https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#incremental-xds :

- The server tracks, per type, which resources the proxy has and at which
  version (seeded from ``initial_resource_versions`` on a new stream), and
  sends only resources that are new or changed, plus the names of removed ones.
- Subscriptions change with ``resource_names_subscribe`` and
  ``resource_names_unsubscribe`` in any request; an empty first request for a
  type (or the name ``*``) is a wildcard subscription.
- A request answering the outstanding nonce is an ACK or (with
  ``error_detail``) a NACK; only an ACK moves the tracked versions. A NACKed
  set is not sent again until the snapshot changes.
- The first subscription to a type is answered even when it is empty, since
  Envoy's initialisation waits for it.
- One response per type is outstanding at a time; listeners and routes wait
  until clusters and every cluster's endpoints are current (``DEPENDS_ON``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.service.discovery.v3 import discovery_pb2

from controlplane.domain.clock import utcnow
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import CLUSTER, ENDPOINT, PUSH_ORDER
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.sotw import DEPENDS_ON
from controlplane.xds.status import ProxyConnection
from controlplane.xds.stream import StreamLoop
from controlplane.xds.wire import EncodedResponse

__all__ = ["DeltaStream"]

log = logging.getLogger(__name__)
WILDCARD = "*"


_NOTHING: Mapping[str, str] = MappingProxyType({})


class _Holdings:
    """Name -> version of what the proxy holds: a snapshot's versions, shared by
    every stream that holds exactly them, plus this stream's own differences
    (None: a name of ``base`` the proxy does not hold)."""

    __slots__ = ("base", "diff")

    def __init__(self, initial: Mapping[str, str] | None = None) -> None:
        self.base: Mapping[str, str] = _NOTHING
        self.diff: dict[str, str | None] = dict(initial or {})

    def get(self, name: str) -> str | None:
        if name in self.diff:
            return self.diff[name]
        return self.base.get(name)

    def hold(self, name: str, version: str) -> None:
        if self.base.get(name) == version:
            self.diff.pop(name, None)
        else:
            self.diff[name] = version

    def pop(self, name: str) -> None:
        if name in self.base:
            self.diff[name] = None
        else:
            self.diff.pop(name, None)

    def exactly(self, versions: Mapping[str, str]) -> bool:
        """Whether these are ``versions`` (shared), with no difference of their own."""
        return self.base is versions and not self.diff

    def share(self, versions: Mapping[str, str]) -> None:
        """Hold exactly ``versions`` (a snapshot's), without a copy."""
        self.base, self.diff = versions, {}

    def names(self) -> set[str]:
        held = {n for n in self.base if self.diff.get(n, "") is not None}
        held.update(n for n, v in self.diff.items() if v is not None)
        return held

    def off(self, snapshot: Snapshot, type_url: str) -> tuple[list[str], list[str]]:
        """Return (names of the snapshot held at another version or not at all,
        names held that the snapshot lacks), from the snapshot's shared
        differences with ``base`` and this stream's own."""
        versions = snapshot.resource_versions[type_url]
        if self.exactly(versions):
            return [], []
        changed, removed = snapshot.differences(type_url, self.base)
        stale = [
            n for n in (changed | self.diff.keys()) if n in versions and self.get(n) != versions[n]
        ]
        gone = [n for n in removed if self.diff.get(n, "") is not None]
        gone.extend(n for n, v in self.diff.items() if v is not None and n not in versions)
        return stale, gone


@dataclass
class _Tracked:
    """What the proxy has of one type, and what is in flight."""

    wildcard: bool = False
    names: frozenset[str] = frozenset()
    has: _Holdings = field(default_factory=_Holdings)
    in_flight: dict[str, str | None] = field(default_factory=dict)
    # The snapshot whose versions the proxy holds exactly once the response in
    # flight is ACKed (it carried every difference and the proxy wants every name).
    completes: Snapshot | None = None
    seeded: bool = False  # the proxy came with resources (a reconnect)

    def covers(self, snapshot: Snapshot, type_url: str) -> bool:
        """Whether the proxy wants every resource of the type in ``snapshot``."""
        every = snapshot.names(type_url)
        return self.wildcard or self.names is every or every <= self.names

    def changes(self, snapshot: Snapshot, type_url: str) -> tuple[list[str], list[str]]:
        """Return (names to send, names to remove) to bring the proxy up to date."""
        stale, gone = self.has.off(snapshot, type_url)
        if not self.wildcard:
            stale = [n for n in stale if n in self.names]
        return sorted(stale), sorted(set(gone))

    def forget(self, name: str) -> None:
        """The proxy no longer holds ``name`` (or must be sent it again)."""
        self.has.pop(name)
        self.completes = None


DeltaResponse = EncodedResponse[discovery_pb2.DeltaDiscoveryResponse]


class DeltaStream(StreamLoop[discovery_pb2.DeltaDiscoveryRequest, DeltaResponse]):
    """Serves one incremental ADS stream from a snapshot cache."""

    def __init__(self, cache: SnapshotCache, connection: ProxyConnection) -> None:
        super().__init__(cache, connection)
        self._tracked = {type_url: _Tracked() for type_url in PUSH_ORDER}

    def _on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        if request.HasField("node"):
            self._identify(request.node)
        state = self._connection.types.get(request.type_url)
        if state is None:
            log.warning("xds.unknown_type", extra={"type_url": request.type_url})
            return
        tracked = self._tracked[request.type_url]
        if not state.subscribed:
            state.subscribed = True
            tracked.wildcard = not request.resource_names_subscribe
            tracked.has = _Holdings(
                {
                    sys.intern(name): version
                    for name, version in request.initial_resource_versions.items()
                }
            )
            tracked.seeded = bool(request.initial_resource_versions)
        names = set(tracked.names)
        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                tracked.wildcard = True
            else:
                # Interned: a hundred proxies naming the same 3,000 clusters share
                # one copy of each name.
                names.add(sys.intern(name))
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                tracked.wildcard = False
            names.discard(name)
            tracked.forget(name)
        if names != tracked.names:
            # Shared with the snapshot's own set when the proxy names every resource.
            current = self._cache.snapshot_for(self._connection.zone)
            frozen = frozenset(names)
            tracked.names = current.shared(request.type_url, frozen) if current else frozen
        state.names = tracked.names
        if request.response_nonce and request.response_nonce == state.sent_nonce and state.pending:
            state.pending = False
            if request.HasField("error_detail"):
                tracked.in_flight.clear()
                tracked.completes = None
                state.record_nack(
                    request.error_detail.message, self._connection.node_id, request.type_url
                )
                self._rejected(state.sent_snapshot, request.type_url, request.error_detail.message)
            else:
                if tracked.completes is not None:
                    # The proxy now holds exactly that snapshot's versions: share them.
                    tracked.has.share(tracked.completes.resource_versions[request.type_url])
                else:
                    for name, version in tracked.in_flight.items():
                        if version is None:
                            tracked.has.pop(name)
                        else:
                            tracked.has.hold(name, version)
                tracked.in_flight.clear()
                tracked.completes = None
                state.record_ack(state.sent_version)

    def _settled(self, type_url: str, snapshot: Snapshot) -> bool:
        state, tracked = self._connection.types[type_url], self._tracked[type_url]
        if type_url == ENDPOINT and not snapshot.resources[ENDPOINT]:
            return True
        if not state.subscribed or state.pending:
            return False
        if any(tracked.changes(snapshot, type_url)):
            return False
        if type_url == ENDPOINT:
            # Every cluster's endpoints held (not only those the proxy asked for).
            stale, _gone = tracked.has.off(snapshot, type_url)
            return all(tracked.has.get(name) is not None for name in stale)
        return True

    def _holds_all(self, snapshot: Snapshot) -> bool:
        return all(self._settled(type_url, snapshot) for type_url in PUSH_ORDER)

    def _respond(self, snapshot: Snapshot) -> list[DeltaResponse]:
        responses = []
        for type_url in PUSH_ORDER:
            state, tracked = self._connection.types[type_url], self._tracked[type_url]
            if not state.subscribed or state.pending:
                continue
            updates, removals = tracked.changes(snapshot, type_url)
            # A first subscription is always answered, even with nothing in it:
            # Envoy's initialisation waits for the first response of each type.
            first = state.sent_version is None and not tracked.seeded
            if not updates and not removals and not first:
                # Up to date: what the proxy has is the current version (shared from
                # now on when it wants every resource: a reconnect's initial versions).
                if tracked.covers(snapshot, type_url):
                    tracked.has.share(snapshot.resource_versions[type_url])
                if state.acked_version != snapshot.version(type_url) and state.sent_version:
                    state.record_ack(snapshot.version(type_url))
                continue
            if state.nacked_version == snapshot.version(type_url):
                continue  # rejected already; wait for a new snapshot
            if not all(self._settled(dep, snapshot) for dep in DEPENDS_ON[type_url]):
                continue
            responses.append(self._response(type_url, snapshot, updates, removals))
        return responses

    def _response(
        self, type_url: str, snapshot: Snapshot, updates: list[str], removals: list[str]
    ) -> DeltaResponse:
        state, tracked = self._connection.types[type_url], self._tracked[type_url]
        versions = snapshot.resource_versions[type_url]
        version = snapshot.version(type_url)
        nonce = self._next_nonce()
        tracked.in_flight = {name: versions[name] for name in updates}
        tracked.in_flight.update({name: None for name in removals})
        every = snapshot.names(type_url)
        # Once ACKed, the proxy holds exactly the snapshot's versions when this carries
        # every difference (it does) and the proxy wants every resource, and nothing
        # else changes what it holds meanwhile (``_Tracked.forget``).
        complete = tracked.covers(snapshot, type_url)
        tracked.completes = snapshot if complete else None
        state.sent_version = version
        state.sent_nonce = nonce
        state.sent_names = every if len(updates) == len(every) else frozenset(updates)
        state.sent_snapshot = snapshot
        if type_url == CLUSTER:
            # An updated cluster warms until its endpoints arrive, and Envoy asks for
            # nothing new when the names it watches are unchanged: send them again.
            # https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#xds-protocol-resource-warming
            for name in updates:
                self._tracked[ENDPOINT].forget(name)
        if complete:
            state.holding = every
        else:
            holding = tracked.has.names() | set(updates)
            state.holding = frozenset(holding - set(removals))
        state.pending = True
        state.sent_at = utcnow()
        header = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version,
            type_url=type_url,
            nonce=nonce,
            removed_resources=removals,
        ).SerializeToString()
        return EncodedResponse(
            discovery_pb2.DeltaDiscoveryResponse,
            type_url,
            version,
            nonce,
            (header, *(snapshot.delta_entry(type_url, name) for name in updates)),
        )
