"""Desired state -> Envoy resources: a pure function.

Same state in, same resources out, on every replica: nothing here reads the
clock, the environment or the database.

``controlplane.xds.packed`` renders the same resources straight to packed
bytes, memoised, for the sync loop. It builds them with the functions here
(one cluster, one assignment, one model's routes, the listener, the route
order), so the two cannot drift apart.

Streams: a request that asks for a streamed answer (``accept:
text/event-stream``, or ``"stream": true`` in a body-routed OpenAI call) takes
a twin of its route that has no total timeout, only the model's
``stream_idle_timeout_ms`` between two chunks (default 60 s), and no per-try
timeout: a long answer that keeps sending is never cut, a silent one is.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-routeaction-idle-timeout
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2
from envoy.type.matcher.v3 import metadata_pb2 as metadata_matcher_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2, value_pb2
from google.protobuf import duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from controlplane.domain.addresses import is_host_name as _parse_is_host_name
from controlplane.domain.naming import stat_name
from controlplane.domain.policy import DEFAULT_STREAM_IDLE_TIMEOUT_MS, Retries
from controlplane.domain.state import (
    DesiredState,
    EndpointSpec,
    ModelSpec,
    TenantSpec,
    VersionSpec,
)
from controlplane.xds.access_log import access_logs, tag_cluster, tag_route
from controlplane.xds.body_routing import (
    LUA_FILTER,
    METADATA_NAMESPACE,
    STREAM_KEY,
    body_routing_filters,
    body_routing_routes,
    served_model_config,
)
from controlplane.xds.edge import LIMIT_METADATA_KEY, body_limit, body_limit_filter, largest_limit
from controlplane.xds.listing import Catalog, catalog_of, listing_routes
from controlplane.xds.policies import apply_route_policy, apply_version_policy, millis
from controlplane.xds.replies import error_metadata, local_reply_config
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, cluster_name, to_any
from controlplane.xds.shadow import compares, shadow_filter, tap_cluster, tee_routes
from controlplane.xds.statistics import stats_access_log
from controlplane.xds.tenancy import (
    ModelAccess,
    access_of,
    model_access_config,
    tenancy_filters,
)
from controlplane.xds.tracing import (
    CLUSTER_METADATA_NAMESPACE,
    TracingOptions,
    tracing_clusters,
    tracing_config,
)

__all__ = [
    "LISTENER_NAME",
    "MODEL_HEADER",
    "ROUTE_CONFIG_NAME",
    "VERSION_HEADER",
    "DnsOptions",
    "ListenerOptions",
    "build_listener",
    "endpoint_zones",
    "load_assignment",
    "model_routes",
    "resolved_by_dns",
    "route_configuration_head",
    "route_order",
    "tail_routes",
    "tap_clusters",
    "translate",
    "translate_endpoints",
    "version_cluster",
    "virtual_host",
]

T = TypeVar("T")

LISTENER_NAME = "turnout_http"
ROUTE_CONFIG_NAME = "turnout_routes"
MODEL_HEADER = "x-turnout-model"
VERSION_HEADER = "x-turnout-version"

NOT_FOUND = (
    "model_not_found",
    "no model matches the path /models/{model}/... or the x-turnout-model header",
)
NO_TRAFFIC = ("no_serving_version", "no version of this model has traffic weight")
NO_VERSION = ("version_not_found", "the model has no version named by x-turnout-version")
# Envoy's default cap on a direct response's body is 4 KiB; the model list is longer.
MAX_DIRECT_RESPONSE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class DnsOptions:
    """How Envoy resolves the endpoints named by DNS: every ``refresh_rate_s``, or
    when the answer's TTL runs out with ``respect_ttl``, through ``resolvers``
    (``host:port`` of DNS servers; empty: the proxy's own, from /etc/resolv.conf)."""

    refresh_rate_s: float = 5.0
    respect_ttl: bool = True
    resolvers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ListenerOptions:
    """What the settings decide of the resources every proxy gets: where the
    data-plane listener binds, whether it may share the port (SO_REUSEPORT) with
    other processes that ask for the same, where its access log goes (None:
    nowhere; see :mod:`controlplane.xds.access_log`), where it sends traces (None:
    no tracing; see :mod:`controlplane.xds.tracing`) and how it resolves endpoints
    named by DNS."""

    host: str = "127.0.0.1"
    port: int = 10000
    reuse_port: bool = False
    access_log_path: str | None = None
    tracing: TracingOptions | None = None
    dns: DnsOptions = DnsOptions()


def translate(
    state: DesiredState,
    listener: ListenerOptions = ListenerOptions(),
    local_zone: str | None = None,
) -> dict[str, dict[str, Message]]:
    """Return ``{type_url: {resource name: message}}`` for ``state``.

    With ``local_zone``, endpoints in that zone get priority 0 and the others
    priority 1, so Envoy prefers its own zone and fails over when it is unhealthy.
    """
    clusters: dict[str, Message] = {}
    for model in state.models:
        for version in model.versions:
            name = cluster_name(model.name, version.name)
            clusters[name] = version_cluster(
                model.name, version, model.policy.retries, listener.dns, local_zone
            )
    clusters.update(tracing_clusters(listener.tracing))
    clusters.update(tap_clusters(state, listener.dns, local_zone))
    return {
        CLUSTER: clusters,
        ENDPOINT: translate_endpoints(state, local_zone),
        LISTENER: {LISTENER_NAME: build_listener(listener, state.tenants, state.jwks)},
        ROUTE: {
            ROUTE_CONFIG_NAME: _route_configuration(
                state.models, access_of(state), catalog_of(state)
            )
        },
    }


def tap_clusters(
    state: DesiredState, dns: DnsOptions, local_zone: str | None
) -> dict[str, cluster_pb2.Cluster]:
    """Return the tap clusters of the models whose shadow compares answers
    (controlplane.xds.shadow), each made from its shadow version's cluster.

    A tap holds its endpoints itself (STATIC, or STRICT_DNS like its version):
    an EDS tap would share its version's EDS resource, which a delta-xDS Envoy
    already holds and is not sent again, so the new cluster would wait out its
    initial fetch timeout before it warms."""
    taps: dict[str, cluster_pb2.Cluster] = {}
    for model in state.models:
        shadow = compares(model)
        if shadow is None:
            continue
        version = next(v for v in model.versions if v.name == shadow.version)
        base = version_cluster(model.name, version, model.policy.retries, dns, local_zone)
        if base.type == cluster_pb2.Cluster.EDS:
            base.ClearField("eds_cluster_config")
            base.type = cluster_pb2.Cluster.STATIC
            base.load_assignment.CopyFrom(
                load_assignment(
                    base.name, version.endpoints, local_zone, version.policy.batching_enabled()
                )
            )
        tap = tap_cluster(model, base)
        taps[tap.name] = tap
    return taps


def translate_endpoints(state: DesiredState, local_zone: str | None) -> dict[str, Message]:
    """Return the ClusterLoadAssignments of ``state`` as seen from ``local_zone``
    (versions resolved by DNS carry theirs inside their cluster)."""
    return {
        cluster_name(model.name, version.name): load_assignment(
            cluster_name(model.name, version.name),
            version.endpoints,
            local_zone,
            version.policy.batching_enabled(),
        )
        for model in state.models
        for version in model.versions
        if not resolved_by_dns(version)
    }


def resolved_by_dns(version: VersionSpec) -> bool:
    """Whether Envoy resolves ``version``'s endpoints itself: one of them is a DNS
    name. Such a version is a STRICT_DNS cluster with its endpoints inline; the
    others are EDS clusters."""
    return any(_is_host_name(endpoint.address) for endpoint in version.endpoints)


# Each address is parsed once (ipaddress), not once per resource that names it: a
# cold translation of 1,000 models asked 90,000 times, the top of its profile.
_is_host_name = functools.lru_cache(maxsize=1 << 17)(_parse_is_host_name)


def endpoint_zones(state: DesiredState) -> list[str]:
    """Return every zone that an endpoint of ``state`` is labelled with, sorted."""
    return sorted(
        {
            endpoint.zone
            for model in state.models
            for version in model.versions
            for endpoint in version.endpoints
            if endpoint.zone
        }
    )


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def version_cluster(
    model: str,
    version: VersionSpec,
    retries: Retries | None,
    dns: DnsOptions = DnsOptions(),
    local_zone: str | None = None,
) -> cluster_pb2.Cluster:
    """Return the cluster of one version of ``model`` (its model's retry budget
    included), named :func:`cluster_name`: an EDS cluster, or a STRICT_DNS one
    holding its endpoints (as seen from ``local_zone``) when
    :func:`resolved_by_dns`."""
    name = cluster_name(model, version.name)
    cluster = cluster_pb2.Cluster(
        name=name,
        alt_stat_name=stat_name(name),
        connect_timeout=duration_pb2.Duration(seconds=1),
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
    )
    if resolved_by_dns(version):
        _resolve_by_dns(cluster, dns)
        cluster.load_assignment.CopyFrom(
            load_assignment(name, version.endpoints, local_zone, version.policy.batching_enabled())
        )
    else:
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(_ads())
        cluster.eds_cluster_config.service_name = name
    # Read by the tracer's model and version tags (controlplane.xds.tracing).
    labels = cluster.metadata.filter_metadata[CLUSTER_METADATA_NAMESPACE]
    labels.fields["model"].string_value = name.partition("/")[0]
    labels.fields["version"].string_value = version.name
    apply_version_policy(cluster, version.policy, retries)
    tag_cluster(cluster, model, version.name)
    return cluster


def _resolve_by_dns(cluster: cluster_pb2.Cluster, dns: DnsOptions) -> None:
    # https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/service_discovery#strict-dns
    cluster.type = cluster_pb2.Cluster.STRICT_DNS
    # IPv4 first: a name such as localhost answers ::1 too, where a server
    # listening on 0.0.0.0 or 127.0.0.1 is not.
    cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    cluster.dns_refresh_rate.FromMilliseconds(max(1, round(dns.refresh_rate_s * 1000)))
    cluster.respect_dns_ttl = dns.respect_ttl
    if dns.resolvers:
        config = cares_dns_resolver_pb2.CaresDnsResolverConfig()
        for resolver in dns.resolvers:
            host, _, port = resolver.rpartition(":")
            address = config.resolvers.add().socket_address
            address.address = host.strip("[]")
            address.port_value = int(port)
            address.protocol = address_pb2.SocketAddress.UDP
        cluster.typed_dns_resolver_config.name = "envoy.network.dns_resolver.cares"
        cluster.typed_dns_resolver_config.typed_config.Pack(config)


def load_assignment(
    name: str, endpoints: tuple[EndpointSpec, ...], local_zone: str | None, batching: bool
) -> endpoint_pb2.ClusterLoadAssignment:
    """Return the ClusterLoadAssignment ``name``: ``endpoints`` by zone, the
    ``local_zone`` first (priority 0) when it has any, through their batchers
    when ``batching``."""
    by_zone: dict[str, list[EndpointSpec]] = {}
    for endpoint in endpoints:
        by_zone.setdefault(endpoint.zone or "", []).append(endpoint)
    has_local = local_zone is not None and local_zone in by_zone
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                locality=base_pb2.Locality(zone=zone),
                lb_endpoints=[_lb_endpoint(e, batching) for e in by_zone[zone]],
                priority=1 if has_local and zone != local_zone else 0,
            )
            for zone in sorted(by_zone)
        ],
    )


def _lb_endpoint(endpoint: EndpointSpec, batching: bool) -> endpoint_components_pb2.LbEndpoint:
    # With batching on, the replica is reached through the batcher beside it.
    port = endpoint.batcher_port if batching and endpoint.batcher_port else endpoint.port
    lb_endpoint = endpoint_components_pb2.LbEndpoint()
    socket_address = lb_endpoint.endpoint.address.socket_address
    socket_address.address = endpoint.address
    socket_address.port_value = port
    lb_endpoint.load_balancing_weight.value = endpoint.weight
    if endpoint.accelerator:
        labels = lb_endpoint.metadata.filter_metadata["turnout"]
        labels.fields["accelerator"].string_value = endpoint.accelerator
    return lb_endpoint


def build_listener(
    options: ListenerOptions, tenants: Sequence[TenantSpec], jwks: str | None
) -> listener_pb2.Listener:
    """Return the data-plane listener: where it binds, and its HTTP filters, which
    depend on the tenants (credential checks, rate limits)."""
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="turnout",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=ROUTE_CONFIG_NAME),
        http_filters=[
            # First: it counts every body against its route's limit as it arrives.
            body_limit_filter(),
            *body_routing_filters(),
            # After body routing: they must see the route an OpenAI body re-routes to.
            *tenancy_filters(tenants, jwks),
            # Last before the router: it sees the route a request finally takes.
            shadow_filter(),
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=to_any(router_pb2.Router())
            ),
        ],
        # Edge defaults, after Envoy's "configuring Envoy as an edge proxy" guide.
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        # "..%2f" must not reach a model server as is: normalisation leaves escaped
        # slashes alone, so such a path is refused (400) rather than forwarded.
        # https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#envoy-v3-api-field-extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-path-with-escaped-slashes-action
        path_with_escaped_slashes_action=hcm_pb2.HttpConnectionManager.REJECT_REQUEST,
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=duration_pb2.Duration(seconds=3600),
            headers_with_underscores_action=protocol_pb2.HttpProtocolOptions.REJECT_REQUEST,
        ),
        http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
            max_concurrent_streams=wrappers_pb2.UInt32Value(value=100),
            initial_stream_window_size=wrappers_pb2.UInt32Value(value=65536),
            initial_connection_window_size=wrappers_pb2.UInt32Value(value=1048576),
        ),
        stream_idle_timeout=duration_pb2.Duration(seconds=300),
        request_headers_timeout=duration_pb2.Duration(seconds=10),
        # Every reply, an error above all, names the request (controlplane.xds.replies).
        always_set_request_id_in_response=True,
        local_reply_config=local_reply_config(),
        # Per-request statistics for the control plane's traffic window, then the
        # JSON access log.
        access_log=[stats_access_log(), *access_logs(options.access_log_path)],
    )
    if options.tracing is not None:
        manager.tracing.CopyFrom(tracing_config(options.tracing))
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=options.host, port_value=options.port)
        ),
        # Envoy binds with SO_REUSEPORT by default, so a second mesh on the same port
        # would bind too and take part of its traffic; without it the bind fails (NACK).
        enable_reuse_port=wrappers_pb2.BoolValue(value=options.reuse_port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=to_any(manager),
                    )
                ]
            )
        ],
    )


def route_order(per_model: Sequence[tuple[T, T]], tail: T) -> list[T]:
    """Return the route groups of the route configuration in match order, first
    match first: every model's routes by path (in model order), then every
    model's routes by header, then ``tail`` (:func:`tail_routes`).

    ``per_model`` holds each model's (path routes, header routes), as messages
    or as their encoded bytes. Paths come before headers so that a request's
    path names its model even when an ``x-turnout-model`` header names another.
    """
    return [*(path for path, _ in per_model), *(header for _, header in per_model), tail]


def _route_configuration(
    models: Iterable[ModelSpec], access: dict[str, ModelAccess], catalog: Catalog
) -> route_pb2.RouteConfiguration:
    models = list(models)
    groups = route_order(
        [model_routes(model, access.get(model.name)) for model in models],
        tail_routes(catalog, largest_limit(models)),
    )
    routes = [route for group in groups for route in group]
    configuration = route_configuration_head()
    configuration.virtual_hosts.append(virtual_host(routes))
    return configuration


def route_configuration_head() -> route_pb2.RouteConfiguration:
    """Return the route configuration without its virtual host."""
    return route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        max_direct_response_body_size_bytes=wrappers_pb2.UInt32Value(
            value=MAX_DIRECT_RESPONSE_BYTES
        ),
    )


def virtual_host(routes: list[route_components_pb2.Route]) -> route_components_pb2.VirtualHost:
    """Return the one virtual host, for every domain, with ``routes``."""
    return route_components_pb2.VirtualHost(name="models", domains=["*"], routes=routes)


def tail_routes(catalog: Catalog, limit: int) -> list[route_components_pb2.Route]:
    """The routes after every model's: the model list (``GET /v1/models``), OpenAI
    body routing (whose bodies may be as large as ``limit``, the largest any model
    takes: :func:`controlplane.xds.edge.largest_limit`), then the 404 catch-all."""
    return [
        *listing_routes(catalog),
        *body_routing_routes(limit),
        _error_route("unknown-model", route_components_pb2.RouteMatch(prefix="/"), 404, NOT_FOUND),
    ]


def model_routes(
    model: ModelSpec, access: ModelAccess | None
) -> tuple[list[route_components_pb2.Route], list[route_components_pb2.Route]]:
    """Return a model's routes by path (``/models/{name}/...``) and by header; with
    ``access`` (a protected model), each route checks the caller's credential."""
    by_path = route_components_pb2.RouteMatch(path_separated_prefix=f"/models/{model.name}")
    by_header = route_components_pb2.RouteMatch(
        prefix="/",
        headers=[
            route_components_pb2.HeaderMatcher(
                name=MODEL_HEADER,
                string_match=string_pb2.StringMatcher(exact=model.name),
            )
        ],
    )
    path_rewrite = regex_pb2.RegexMatchAndSubstitute(
        pattern=regex_pb2.RegexMatcher(regex=f"^/models/{re.escape(model.name)}/?"),
        substitution="/",
    )
    by_path_routes = _routes_by(model, by_path, path_rewrite)
    by_header_routes = _routes_by(model, by_header, None)
    limit = model.policy.request_limit()
    for route in (*by_path_routes, *by_header_routes):
        body_limit(route, limit)
    tee_routes(model, [*by_path_routes, *by_header_routes])
    for route in by_header_routes:
        # Read by the body-routing script once the body has named this model.
        metadata = route.metadata.filter_metadata[LUA_FILTER]
        metadata.fields[LIMIT_METADATA_KEY].number_value = limit
    if access is not None:
        checks = model_access_config(access)
        for route in (*by_path_routes, *by_header_routes):
            for name, config in checks.items():
                route.typed_per_filter_config[name].CopyFrom(config)
    return by_path_routes, by_header_routes


def _routes_by(
    model: ModelSpec,
    match: route_components_pb2.RouteMatch,
    rewrite: regex_pb2.RegexMatchAndSubstitute | None,
) -> list[route_components_pb2.Route]:
    """Return a model's routes for one way of naming it, first match first:
    version pins (x-turnout-version), experiments, then the weighted split."""
    kind = "path" if rewrite is not None else "header"
    routes: list[route_components_pb2.Route] = []
    for version in model.versions:
        pinned = _with_headers(match, [(VERSION_HEADER, version.name)])
        routes.append(_version_route(model, version.name, pinned, rewrite, f"pin/{version.name}"))
    routes.append(
        _error_route(
            f"{model.name}/{kind}/pin-unknown",
            _with_headers(match, [(VERSION_HEADER, None)]),
            404,
            NO_VERSION,
        )
    )
    for i, experiment in enumerate(model.policy.experiments):
        matched = _with_headers(match, [(experiment.header, experiment.value)])
        routes.append(_version_route(model, experiment.version, matched, rewrite, f"exp{i}"))
    routes.append(_model_route(model, match, rewrite))
    # Body routing sets no path, so only header routes see "stream": true bodies.
    by_body = rewrite is None
    return [
        tag_route(_named(twin, model.name, kind), model.name)
        for route in routes
        for twin in (*_stream_twins(route, model, by_body), route)
    ]


def _stream_twins(
    route: route_components_pb2.Route, model: ModelSpec, by_body: bool
) -> list[route_components_pb2.Route]:
    """Return the twins of ``route`` for streamed answers (see the module's docstring):
    one for ``accept: text/event-stream``, and with ``by_body`` one for body-routed
    requests whose body says ``"stream": true``. A direct response has none."""
    if not route.HasField("route"):
        return []
    sse = route_components_pb2.HeaderMatcher(
        name="accept",
        string_match=string_pb2.StringMatcher(contains="text/event-stream", ignore_case=True),
    )
    streamed = metadata_matcher_pb2.MetadataMatcher(
        filter=METADATA_NAMESPACE,
        path=[metadata_matcher_pb2.MetadataMatcher.PathSegment(key=STREAM_KEY)],
        value=value_pb2.ValueMatcher(bool_match=True),
    )
    twins = []
    if by_body:
        body_twin = _stream_route(route, model, "stream-body")
        body_twin.match.dynamic_metadata.append(streamed)
        twins.append(body_twin)
    sse_twin = _stream_route(route, model, "stream-sse")
    sse_twin.match.headers.append(sse)
    twins.append(sse_twin)
    return twins


def _stream_route(
    route: route_components_pb2.Route, model: ModelSpec, suffix: str
) -> route_components_pb2.Route:
    twin = route_components_pb2.Route()
    twin.CopyFrom(route)
    twin.name = f"{route.name}/{suffix}"
    idle = DEFAULT_STREAM_IDLE_TIMEOUT_MS
    timeouts = model.policy.timeouts
    if timeouts is not None and timeouts.stream_idle_timeout_ms is not None:
        idle = timeouts.stream_idle_timeout_ms
    twin.route.timeout.CopyFrom(duration_pb2.Duration())  # 0: no bound on the whole stream
    twin.route.idle_timeout.CopyFrom(millis(idle))
    if twin.route.HasField("retry_policy"):
        twin.route.retry_policy.ClearField("per_try_timeout")
    return twin


def _named(route: route_components_pb2.Route, model: str, kind: str) -> route_components_pb2.Route:
    if not route.name.startswith(f"{model}/"):
        route.name = f"{model}/{kind}/{route.name}"
    return route


def _with_headers(
    match: route_components_pb2.RouteMatch, headers: list[tuple[str, str | None]]
) -> route_components_pb2.RouteMatch:
    """Return ``match`` that also needs each header: equal to a value, or present (None)."""
    extended = route_components_pb2.RouteMatch()
    extended.CopyFrom(match)
    for name, value in headers:
        if value is None:
            extended.headers.append(
                route_components_pb2.HeaderMatcher(name=name, present_match=True)
            )
        else:
            extended.headers.append(
                route_components_pb2.HeaderMatcher(
                    name=name, string_match=string_pb2.StringMatcher(exact=value)
                )
            )
    return extended


def _version_route(
    model: ModelSpec,
    version: str,
    match: route_components_pb2.RouteMatch,
    rewrite: regex_pb2.RegexMatchAndSubstitute | None,
    name: str,
) -> route_components_pb2.Route:
    """Return a route that sends every request it matches to one version."""
    action = route_components_pb2.RouteAction(cluster=cluster_name(model.name, version))
    apply_route_policy(action, model, version)
    if rewrite is not None:
        action.regex_rewrite.CopyFrom(rewrite)
    route = route_components_pb2.Route(
        name=name,
        match=match,
        route=action,
        response_headers_to_add=[_header(VERSION_HEADER, version)],
    )
    if rewrite is None:
        # Body routing sets a header: only header routes see body-routed requests.
        for filter_name, config in served_model_config(_served_name(model, version)).items():
            route.typed_per_filter_config[filter_name].CopyFrom(config)
    return route


def _served_name(model: ModelSpec, version: str) -> str:
    """Return the model name that ``version``'s server expects."""
    for spec in model.versions:
        if spec.name == version and spec.policy.served_model_name is not None:
            return spec.policy.served_model_name
    return model.name


def _model_route(
    model: ModelSpec,
    match: route_components_pb2.RouteMatch,
    rewrite: regex_pb2.RegexMatchAndSubstitute | None,
) -> route_components_pb2.Route:
    kind = "path" if rewrite is not None else "header"
    weighted = [(v.name, model.weight_of(v.name)) for v in model.versions]
    weighted = [(name, weight) for name, weight in weighted if weight > 0]
    if not weighted:
        return _error_route(f"{model.name}/{kind}", match, 503, NO_TRAFFIC)
    action = route_components_pb2.RouteAction(
        weighted_clusters=route_components_pb2.WeightedCluster(
            clusters=[
                route_components_pb2.WeightedCluster.ClusterWeight(
                    name=cluster_name(model.name, version),
                    weight=wrappers_pb2.UInt32Value(value=weight),
                    response_headers_to_add=[_header(VERSION_HEADER, version)],
                    typed_per_filter_config=(
                        {} if rewrite else served_model_config(_served_name(model, version))
                    ),
                )
                for version, weight in weighted
            ]
        ),
    )
    apply_route_policy(action, model, None)
    if rewrite is not None:
        action.regex_rewrite.CopyFrom(rewrite)
    return route_components_pb2.Route(name=f"{model.name}/{kind}", match=match, route=action)


def _error_route(
    name: str, match: route_components_pb2.RouteMatch, status: int, error: tuple[str, str]
) -> route_components_pb2.Route:
    """Return a route that answers ``status`` with the JSON error ``(code, detail)``;
    its metadata carries both for the local reply mappers (controlplane.xds.replies)."""
    code, detail = error
    return route_components_pb2.Route(
        name=name,
        match=match,
        direct_response=route_components_pb2.DirectResponseAction(
            status=status,
            body=base_pb2.DataSource(inline_string=json.dumps({"error": code, "detail": detail})),
        ),
        response_headers_to_add=[_header("content-type", "application/json")],
        metadata=error_metadata(code, detail),
    )


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
