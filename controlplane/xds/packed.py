"""Desired state -> packed Envoy resources, memoised: the sync loop's translation.

:class:`PackedTranslator` renders exactly what ``translate`` renders, with the
same building blocks (``controlplane.xds.translate``: one version's cluster
and endpoints, one model's routes, the listener, the route order), but keeps
each result as serialized bytes memoised on its immutable spec. A change
re-renders only what it touched, and the memo holds bytes rather than message
objects (a message costs far more memory than its bytes). The route
configuration is put together from the models' memoised route bytes on the
wire, since a repeated message field is the concatenation of its entries.
https://protobuf.dev/programming-guides/encoding/#optional

The memos belong to the translator, and the translator to its owner (the sync
loop), which rotates it once per published revision.
"""

from __future__ import annotations

import hashlib

from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import any_pb2

from controlplane.domain.policy import Retries
from controlplane.domain.state import DesiredState, ModelSpec, TenantSpec, VersionSpec
from controlplane.xds import translate as render
from controlplane.xds.edge import largest_limit
from controlplane.xds.listing import Catalog, catalog_of
from controlplane.xds.memo import Memoised
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, cluster_name
from controlplane.xds.snapshot import PackedResource, pack_resource
from controlplane.xds.tenancy import ModelAccess, access_of
from controlplane.xds.tracing import tracing_clusters

__all__ = ["PackedTranslator"]

_VIRTUAL_HOST_ROUTES = 3  # VirtualHost.routes
_ROUTE_CONFIGURATION_VIRTUAL_HOSTS = 2  # RouteConfiguration.virtual_hosts


class PackedTranslator:
    """Translates desired states to packed resources, remembering what it rendered.

    ``translate(state, listener, zone)`` gives the resources of
    ``controlplane.xds.translate.translate(state, listener, zone)``, packed,
    byte for byte. Results are memoised for the last two generations:
    :meth:`rotate` starts a new one. Not thread-safe; one owner uses it.
    """

    def __init__(self) -> None:
        self._clusters = Memoised(_cluster)
        self._assignments = Memoised(_assignment)
        self._model_routes = Memoised(_model_routes)
        self._listeners = Memoised(_listener)
        self._tail_routes = Memoised(_tail_routes)
        # The same for every state: rendered once per translator.
        self._virtual_host_head: bytes = render.virtual_host([]).SerializeToString(
            deterministic=True
        )
        # A message's fields go out in field order: the name (1), the virtual host (2)
        # the translator puts together, then every later field of the head.
        head = render.route_configuration_head()
        self._route_configuration_name = route_pb2.RouteConfiguration(
            name=head.name
        ).SerializeToString(deterministic=True)
        head.ClearField("name")
        self._route_configuration_rest = head.SerializeToString(deterministic=True)

    def translate(
        self,
        state: DesiredState,
        listener: render.ListenerOptions = render.ListenerOptions(),
        local_zone: str | None = None,
    ) -> dict[str, dict[str, PackedResource]]:
        """Return ``{type_url: {name: (packed resource, version hash)}}`` for ``state``:
        the resources of ``translate(state, listener, local_zone)``, packed."""
        clusters = {
            cluster_name(m.name, v.name): self._cluster(m, v, listener.dns, local_zone)
            for m in state.models
            for v in m.versions
        }
        for name, cluster in tracing_clusters(listener.tracing).items():
            clusters[name] = pack_resource(cluster)
        for name, cluster in render.tap_clusters(state, listener.dns, local_zone).items():
            clusters[name] = pack_resource(cluster)
        access = access_of(state)
        return {
            CLUSTER: clusters,
            ENDPOINT: self.endpoints(state, local_zone),
            LISTENER: {render.LISTENER_NAME: self._listeners(listener, state.tenants, state.jwks)},
            ROUTE: {
                render.ROUTE_CONFIG_NAME: self._route_configuration(
                    [self._model_routes(model, access.get(model.name)) for model in state.models],
                    self._tail_routes(catalog_of(state), largest_limit(state.models)),
                )
            },
        }

    def endpoints(self, state: DesiredState, local_zone: str | None) -> dict[str, PackedResource]:
        """Return the packed ClusterLoadAssignments of ``state`` as seen from ``local_zone``."""
        return {
            cluster_name(m.name, v.name): self._assignments(
                cluster_name(m.name, v.name), v, local_zone
            )
            for m in state.models
            for v in m.versions
            if not render.resolved_by_dns(v)
        }

    def for_zone(
        self,
        state: DesiredState,
        listener: render.ListenerOptions,
        local_zone: str,
        resources: dict[str, dict[str, PackedResource]],
    ) -> dict[str, dict[str, PackedResource]]:
        """Return ``resources`` (this state's, translated with no zone) as seen from
        ``local_zone``: the endpoints, and the clusters that hold their own."""
        dns_clusters = {
            cluster_name(m.name, v.name): self._cluster(m, v, listener.dns, local_zone)
            for m in state.models
            for v in m.versions
            if render.resolved_by_dns(v)
        }
        # A shadow's tap cluster is made from its version's cluster: zoned alike.
        taps = {
            name: pack_resource(cluster)
            for name, cluster in render.tap_clusters(state, listener.dns, local_zone).items()
        }
        return {
            **resources,
            CLUSTER: {**resources[CLUSTER], **dns_clusters, **taps},
            ENDPOINT: self.endpoints(state, local_zone),
        }

    def _cluster(
        self, model: ModelSpec, version: VersionSpec, dns: render.DnsOptions, zone: str | None
    ) -> PackedResource:
        # Only a cluster holding its endpoints depends on the proxy's zone.
        if render.resolved_by_dns(version):
            return self._clusters(model.name, version, model.policy.retries, dns, zone)
        return self._clusters(model.name, version, model.policy.retries, dns, None)

    def rotate(self) -> None:
        """Start a new memo generation: what no translation used since the previous
        rotation is forgotten. Call it once per published revision."""
        self._clusters.rotate()
        self._assignments.rotate()
        self._model_routes.rotate()
        self._listeners.rotate()
        self._tail_routes.rotate()

    def memo_sizes(self) -> dict[str, int]:
        """Return how many results each memo holds (both generations)."""
        return {
            "clusters": len(self._clusters),
            "assignments": len(self._assignments),
            "model_routes": len(self._model_routes),
            "listeners": len(self._listeners),
            "tail_routes": len(self._tail_routes),
        }

    def _route_configuration(
        self, per_model: list[tuple[bytes, bytes]], tail: bytes
    ) -> PackedResource:
        virtual_host = b"".join([self._virtual_host_head, *render.route_order(per_model, tail)])
        value = (
            self._route_configuration_name
            + _field(_ROUTE_CONFIGURATION_VIRTUAL_HOSTS, virtual_host)
            + self._route_configuration_rest
        )
        packed = any_pb2.Any(type_url=ROUTE, value=value)
        return packed, hashlib.sha256(value).hexdigest()[:16]


def _cluster(
    model: str,
    version: VersionSpec,
    retries: Retries | None,
    dns: render.DnsOptions,
    local_zone: str | None,
) -> PackedResource:
    return pack_resource(render.version_cluster(model, version, retries, dns, local_zone))


def _assignment(name: str, version: VersionSpec, local_zone: str | None) -> PackedResource:
    # Keyed by the whole version, whose hash is computed once: cheaper to look up
    # than its endpoints, at the price of a re-render when only its policy changes.
    batching = version.policy.batching_enabled()
    return pack_resource(render.load_assignment(name, version.endpoints, local_zone, batching))


def _listener(
    options: render.ListenerOptions, tenants: tuple[TenantSpec, ...], jwks: str | None
) -> PackedResource:
    return pack_resource(render.build_listener(options, tenants, jwks))


def _tail_routes(catalog: Catalog, limit: int) -> bytes:
    return _entries(render.tail_routes(catalog, limit))


def _model_routes(model: ModelSpec, access: ModelAccess | None) -> tuple[bytes, bytes]:
    """The model's path routes and header routes, each as VirtualHost.routes entries."""
    path_routes, header_routes = render.model_routes(model, access)
    return _entries(path_routes), _entries(header_routes)


def _entries(routes: list[route_components_pb2.Route]) -> bytes:
    return b"".join(
        _field(_VIRTUAL_HOST_ROUTES, route.SerializeToString(deterministic=True))
        for route in routes
    )


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited field: its tag, the payload's length, the payload."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
