"""Desired state -> packed Envoy resources, memoised: the sync loop's translation.

It renders exactly what ``translate`` renders, but keeps each version's
cluster and endpoints, and each model's routes, as serialized bytes memoised
on their immutable specs. A change re-renders only what it touched, and the
memo holds bytes rather than message objects (a message costs far more memory
than its bytes). The route configuration is put together from the models'
memoised route bytes on the wire, since a repeated message field is the
concatenation of its entries.
https://protobuf.dev/programming-guides/encoding/#optional
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import any_pb2

from controlplane.domain.policy import Retries
from controlplane.domain.state import (
    DesiredState,
    ModelSpec,
    TenantSpec,
    VersionSpec,
)
from controlplane.xds import translate as render
from controlplane.xds.memo import memoised
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, cluster_name
from controlplane.xds.snapshot import PackedResource, pack_resource
from controlplane.xds.tenancy import ModelAccess, access_of

__all__ = ["clear_caches", "packed_endpoints", "rotate_caches", "translate_packed"]

_VIRTUAL_HOST_ROUTES = 3  # VirtualHost.routes
_ROUTE_CONFIGURATION_VIRTUAL_HOSTS = 2  # RouteConfiguration.virtual_hosts


def translate_packed(
    state: DesiredState,
    listener: render.ListenerOptions = render.ListenerOptions(),
    local_zone: str | None = None,
) -> dict[str, dict[str, PackedResource]]:
    """Return ``{type_url: {name: (packed resource, version hash)}}`` for ``state``:
    the resources of ``translate(state, listener, local_zone)``, packed."""
    clusters = {
        cluster_name(m.name, v.name): _cluster(cluster_name(m.name, v.name), v, m.policy.retries)
        for m in state.models
        for v in m.versions
    }
    access = access_of(state)
    return {
        CLUSTER: clusters,
        ENDPOINT: packed_endpoints(state, local_zone),
        LISTENER: {render.LISTENER_NAME: _listener(listener, state.tenants, state.jwks)},
        ROUTE: {
            render.ROUTE_CONFIG_NAME: _route_configuration(
                tuple((model, access.get(model.name)) for model in state.models)
            )
        },
    }


def packed_endpoints(state: DesiredState, local_zone: str | None) -> dict[str, PackedResource]:
    """Return the packed ClusterLoadAssignments of ``state`` as seen from ``local_zone``."""
    return {
        cluster_name(m.name, v.name): _assignment(cluster_name(m.name, v.name), v, local_zone)
        for m in state.models
        for v in m.versions
    }


def rotate_caches() -> None:
    """Start a new memo generation: what no translation used since the previous
    rotation is forgotten. The sync loop calls it once per published revision."""
    for memo in (_cluster, _assignment, _model_routes):
        memo.rotate()


def clear_caches() -> None:
    """Forget every memoised resource (benchmarks use it to time a cold translation)."""
    for memo in (_cluster, _assignment, _model_routes):
        memo.clear()
    _listener.cache_clear()


@memoised
def _cluster(name: str, version: VersionSpec, retries: Retries | None) -> PackedResource:
    return pack_resource(render._cluster(name, version, retries))


@memoised
def _assignment(name: str, version: VersionSpec, local_zone: str | None) -> PackedResource:
    # Keyed by the whole version, whose hash is computed once: cheaper to look up
    # than its endpoints, at the price of a re-render when only its policy changes.
    batching = version.policy.batching_enabled()
    return pack_resource(render._load_assignment(name, version.endpoints, local_zone, batching))


@lru_cache(maxsize=16)
def _listener(
    options: render.ListenerOptions, tenants: tuple[TenantSpec, ...], jwks: str | None
) -> PackedResource:
    # The listener depends on the options and, through its filters, on the tenants.
    state = DesiredState(revision=0, tenants=tenants, jwks=jwks)
    return pack_resource(render._listener(options, state))


@memoised
def _model_routes(model: ModelSpec, access: ModelAccess | None) -> tuple[bytes, bytes]:
    """The model's path routes and header routes, each as VirtualHost.routes entries."""
    path_routes, header_routes = render._routes_of(model, access)
    return _entries(path_routes), _entries(header_routes)


def _route_configuration(
    models: tuple[tuple[ModelSpec, ModelAccess | None], ...],
) -> PackedResource:
    parts = [_model_routes(model, access) for model, access in models]
    virtual_host = b"".join(
        [
            _virtual_host_head(),
            *(path for path, _ in parts),
            *(header for _, header in parts),
            _tail_routes(),
        ]
    )
    head = route_pb2.RouteConfiguration(name=render.ROUTE_CONFIG_NAME)
    value = head.SerializeToString(deterministic=True) + _field(
        _ROUTE_CONFIGURATION_VIRTUAL_HOSTS, virtual_host
    )
    packed = any_pb2.Any(type_url=ROUTE, value=value)
    return packed, hashlib.sha256(value).hexdigest()[:16]


@lru_cache(maxsize=1)
def _virtual_host_head() -> bytes:
    head: bytes = render._virtual_host([]).SerializeToString(deterministic=True)
    return head


@lru_cache(maxsize=1)
def _tail_routes() -> bytes:
    return _entries(render._tail_routes())


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
