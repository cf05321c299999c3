"""State-of-the-world aggregated discovery (ADS) for one stream, without gRPC.

Protocol rules followed here, from
https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol :

- A request whose ``response_nonce`` is not the latest nonce sent for its type
  is stale and ignored.
- A request answering the latest nonce is an ACK (no ``error_detail``) or a
  NACK. After a NACK the rejected version is not sent again; the proxy keeps
  its last good config until a new version exists.
- At most one response per type is outstanding (not yet ACKed or NACKed).
- Nothing is sent when nothing changed, but newly requested names are always
  answered.
- Types go out in the order CDS, EDS, LDS, RDS, and listeners and routes are
  held back until clusters and every cluster's endpoints are ACKed at the
  current version ("make before break": a route never points at a cluster
  still warming). Endpoints are answered at once: Envoy ACKs new clusters
  only after they warm, which needs their endpoints.
- Nothing is sent before the state has been loaded (no empty push).
- Endpoints are sent again after every cluster response, even unchanged:
  an updated cluster warms until its endpoints arrive.
"""

from __future__ import annotations

import logging

from envoy.service.discovery.v3 import discovery_pb2

from controlplane.domain.clock import utcnow
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.status import TypeState
from controlplane.xds.stream import StreamLoop
from controlplane.xds.wire import EncodedResponse

__all__ = ["DEPENDS_ON", "SotwStream", "plan_types"]

log = logging.getLogger(__name__)

DEPENDS_ON: dict[str, tuple[str, ...]] = {
    CLUSTER: (),
    # Envoy asks for endpoints while it warms new clusters and ACKs the clusters
    # only once they are warm, so endpoints must not wait for that ACK.
    ENDPOINT: (),
    LISTENER: (CLUSTER, ENDPOINT),
    ROUTE: (CLUSTER, ENDPOINT, LISTENER),
}


def _settled(state: TypeState, type_url: str, snapshot: Snapshot) -> bool:
    """Whether the proxy has ACKed ``type_url`` at the snapshot's version."""
    if type_url == ENDPOINT and not snapshot.resources[ENDPOINT]:
        return True
    if not state.subscribed:
        return False
    if state.pending or state.acked_version != snapshot.version(type_url):
        return False
    if type_url == ENDPOINT:
        # Every cluster's endpoints must have been delivered, not only ACKed.
        return set(snapshot.resources[ENDPOINT]) <= state.sent_names
    return True


def _needs_send(state: TypeState, type_url: str, snapshot: Snapshot) -> bool:
    target = snapshot.version(type_url)
    if state.client_version() != target and state.nacked_version != target:
        return True
    # Newly requested names are answered even when the version is unchanged.
    return bool(state.names) and not state.names <= state.sent_names


def plan_types(types: dict[str, TypeState], snapshot: Snapshot | None) -> list[str]:
    """Return the type URLs to send now, in push order. Pure: changes nothing."""
    if snapshot is None:
        return []
    plan: list[str] = []
    for type_url in PUSH_ORDER:
        state = types[type_url]
        if not state.subscribed or state.pending:
            continue
        if not _needs_send(state, type_url, snapshot):
            continue
        if all(_settled(types[dep], dep, snapshot) for dep in DEPENDS_ON[type_url]):
            plan.append(type_url)
    return plan


SotwResponse = EncodedResponse[discovery_pb2.DiscoveryResponse]


class SotwStream(StreamLoop[discovery_pb2.DiscoveryRequest, SotwResponse]):
    """Serves one state-of-the-world ADS stream from a snapshot cache."""

    def _respond(self, snapshot: Snapshot) -> list[SotwResponse]:
        return [
            self._response(type_url, snapshot)
            for type_url in plan_types(self._connection.types, snapshot)
        ]

    def _holds_all(self, snapshot: Snapshot) -> bool:
        types = self._connection.types
        return all(_settled(types[type_url], type_url, snapshot) for type_url in PUSH_ORDER)

    def _on_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        connection = self._connection
        if request.HasField("node"):
            self._identify(request.node)
        state = connection.types.get(request.type_url)
        if state is None:
            log.warning("xds.unknown_type", extra={"type_url": request.type_url})
            return
        if request.response_nonce:
            if request.response_nonce != state.sent_nonce:
                return  # stale: answers a response that has been superseded
            state.pending = False
            if request.HasField("error_detail"):
                state.record_nack(
                    request.error_detail.message, connection.node_id, request.type_url
                )
                self._rejected(state.sent_snapshot, request.type_url, request.error_detail.message)
            else:
                state.record_ack(request.version_info)
        else:
            state.subscribed = True
            state.acked_version = request.version_info or None
        names = frozenset(request.resource_names)
        current = self._cache.snapshot_for(connection.zone)
        state.names = current.shared(request.type_url, names) if current else names

    def _response(self, type_url: str, snapshot: Snapshot) -> SotwResponse:
        state = self._connection.types[type_url]
        nonce = self._next_nonce()
        resources = snapshot.encoded(type_url, state.names)
        state.sent_version = snapshot.version(type_url)
        state.sent_nonce = nonce
        state.sent_names = state.names if state.names else snapshot.names(type_url)
        state.sent_snapshot = snapshot
        state.holding = state.sent_names
        state.pending = True
        state.sent_at = utcnow()
        if type_url == CLUSTER:
            # Envoy warms every updated cluster until it receives that cluster's
            # ClusterLoadAssignment, but sends no new EDS request when the names it
            # watches are unchanged; without a fresh EDS response it waits out
            # initial_fetch_timeout (15 s) and falls back to its cached copy. So
            # after clusters go out, the endpoints are due again.
            # https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#xds-protocol-resource-warming
            self._connection.types[ENDPOINT].sent_names = frozenset()
        header = discovery_pb2.DiscoveryResponse(
            version_info=state.sent_version, type_url=type_url, nonce=nonce
        ).SerializeToString()
        return EncodedResponse(
            discovery_pb2.DiscoveryResponse,
            type_url,
            state.sent_version,
            nonce,
            (header, resources),
        )
