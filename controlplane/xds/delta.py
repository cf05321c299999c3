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
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from controlplane.domain.clock import utcnow
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import CLUSTER, ENDPOINT, PUSH_ORDER
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.sotw import DEPENDS_ON
from controlplane.xds.status import ProxyConnection
from controlplane.xds.stream import StreamLoop

__all__ = ["DeltaStream"]

log = logging.getLogger(__name__)
WILDCARD = "*"


@dataclass
class _Tracked:
    """What the proxy has of one type, and what is in flight."""

    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    has: dict[str, str] = field(default_factory=dict)
    in_flight: dict[str, str | None] = field(default_factory=dict)
    seeded: bool = False  # the proxy came with resources (a reconnect)

    def interest(self, snapshot: Snapshot, type_url: str) -> set[str]:
        """Names the proxy wants: every resource for a wildcard, plus explicit names."""
        every = set(snapshot.resources[type_url])
        return every | self.names if self.wildcard else set(self.names)

    def changes(self, snapshot: Snapshot, type_url: str) -> tuple[list[str], list[str]]:
        """Return (names to send, names to remove) to bring the proxy up to date."""
        versions = snapshot.resource_versions[type_url]
        interest = self.interest(snapshot, type_url)
        updates = sorted(n for n in interest if n in versions and self.has.get(n) != versions[n])
        removals = sorted(n for n in self.has if n not in versions)
        return updates, removals


class DeltaStream(
    StreamLoop[discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse]
):
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
            tracked.has = {
                sys.intern(name): version
                for name, version in request.initial_resource_versions.items()
            }
            tracked.seeded = bool(tracked.has)
        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                tracked.wildcard = True
            else:
                # Interned: a hundred proxies naming the same 3,000 clusters share
                # one copy of each name.
                tracked.names.add(sys.intern(name))
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                tracked.wildcard = False
            tracked.names.discard(name)
            tracked.has.pop(name, None)
        state.names = frozenset(tracked.names)
        if request.response_nonce and request.response_nonce == state.sent_nonce and state.pending:
            state.pending = False
            if request.HasField("error_detail"):
                tracked.in_flight.clear()
                state.record_nack(
                    request.error_detail.message, self._connection.node_id, request.type_url
                )
                self._rejected(state.sent_snapshot, request.type_url, request.error_detail.message)
            else:
                for name, version in tracked.in_flight.items():
                    if version is None:
                        tracked.has.pop(name, None)
                    else:
                        tracked.has[name] = version
                tracked.in_flight.clear()
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
            return set(snapshot.resources[ENDPOINT]) <= set(tracked.has)
        return True

    def _holds_all(self, snapshot: Snapshot) -> bool:
        return all(self._settled(type_url, snapshot) for type_url in PUSH_ORDER)

    def _respond(self, snapshot: Snapshot) -> list[discovery_pb2.DeltaDiscoveryResponse]:
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
                # Up to date: what the proxy has is the current version.
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
    ) -> discovery_pb2.DeltaDiscoveryResponse:
        state, tracked = self._connection.types[type_url], self._tracked[type_url]
        versions = snapshot.resource_versions[type_url]
        nonce = self._next_nonce()
        tracked.in_flight = {name: versions[name] for name in updates}
        tracked.in_flight.update({name: None for name in removals})
        state.sent_version = snapshot.version(type_url)
        state.sent_nonce = nonce
        state.sent_names = frozenset(updates)
        state.sent_snapshot = snapshot
        if type_url == CLUSTER:
            # An updated cluster warms until its endpoints arrive, and Envoy asks for
            # nothing new when the names it watches are unchanged: send them again.
            # https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#xds-protocol-resource-warming
            for name in updates:
                self._tracked[ENDPOINT].has.pop(name, None)
        state.holding = frozenset((set(tracked.has) | set(updates)) - set(removals))
        state.pending = True
        state.sent_at = utcnow()
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=state.sent_version,
            type_url=type_url,
            nonce=nonce,
            resources=[
                discovery_pb2.Resource(
                    name=name, version=versions[name], resource=snapshot.resources[type_url][name]
                )
                for name in updates
            ],
            removed_resources=removals,
        )
