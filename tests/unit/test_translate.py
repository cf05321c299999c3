"""Desired state -> Envoy resources: clusters, assignments, listener and routes."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from controlplane.bootstrap import XdsAddress, render_bootstrap
from controlplane.domain.policy import Batching, ModelPolicy, VersionPolicy
from controlplane.domain.state import DesiredState, EndpointSpec, ModelSpec, VersionSpec
from controlplane.processes import envoy_binary
from controlplane.xds.edge import BODY_LIMIT_FILTER
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from controlplane.xds.tracing import TracingOptions
from controlplane.xds.translate import (
    LISTENER_NAME,
    MODEL_HEADER,
    ROUTE_CONFIG_NAME,
    VERSION_HEADER,
    DnsOptions,
    ListenerOptions,
    endpoint_zones,
    translate,
)
from tests.strategies import desired_states


def _sentiment(weights: tuple[tuple[str, int], ...] = (("v1", 80), ("v2", 20))) -> ModelSpec:
    return ModelSpec(
        name="sentiment",
        protocol="http",
        versions=(
            VersionSpec(
                "v1",
                (
                    EndpointSpec("10.0.0.1", 8001, zone="us-east-1b", accelerator="a100", weight=3),
                    EndpointSpec("10.0.0.2", 8001, zone="us-east-1a"),
                    EndpointSpec("10.0.0.3", 8001, zone="us-east-1b"),
                ),
            ),
            VersionSpec("v2", (EndpointSpec("10.0.1.1", 8002),)),
        ),
        weights=weights,
    )


def _state(*models: ModelSpec) -> DesiredState:
    return DesiredState(revision=7, models=models or (_sentiment(),))


def _routes(state: DesiredState) -> list[route_components_pb2.Route]:
    config = translate(state)[ROUTE][ROUTE_CONFIG_NAME]
    assert isinstance(config, route_pb2.RouteConfiguration)
    (virtual_host,) = config.virtual_hosts
    return list(virtual_host.routes)


def _route(state: DesiredState, name: str) -> route_components_pb2.Route:
    matching = [r for r in _routes(state) if r.name == name]
    assert len(matching) == 1, [r.name for r in _routes(state)]
    return matching[0]


def _manager(listener: listener_pb2.Listener) -> hcm_pb2.HttpConnectionManager:
    (chain,) = listener.filter_chains
    (network_filter,) = chain.filters
    manager = hcm_pb2.HttpConnectionManager()
    assert network_filter.typed_config.Unpack(manager)
    return manager


def test_each_version_becomes_an_eds_cluster_named_model_slash_version() -> None:
    clusters = translate(_state())[CLUSTER]

    assert sorted(clusters) == ["sentiment/v1", "sentiment/v2"]
    for name, cluster in clusters.items():
        assert isinstance(cluster, cluster_pb2.Cluster)
        assert cluster.name == name
        assert cluster.type == cluster_pb2.Cluster.EDS
        assert cluster.eds_cluster_config.service_name == name
        assert cluster.eds_cluster_config.eds_config.HasField("ads")


def test_a_version_named_by_dns_is_a_cluster_envoy_resolves_with_its_endpoints() -> None:
    named = VersionSpec(
        "v3",
        (
            EndpointSpec("sentiment-v3.ml.svc", 8003, zone="us-east-1a", batcher_port=9003),
            EndpointSpec("10.0.3.2", 8003, zone="us-east-1b", weight=2),
        ),
        VersionPolicy(batching=Batching(max_batch_size=8)),
    )
    model = ModelSpec("sentiment", "http", (named,), (("v3", 100),))
    options = ListenerOptions(
        dns=DnsOptions(refresh_rate_s=2.5, respect_ttl=False, resolvers=("10.96.0.10:53",))
    )
    resources = translate(_state(model), options, local_zone="us-east-1b")

    # No EDS for it: Envoy resolves the names and holds the endpoints in the cluster.
    assert "sentiment/v3" not in resources[ENDPOINT]
    cluster = resources[CLUSTER]["sentiment/v3"]
    assert isinstance(cluster, cluster_pb2.Cluster)
    assert cluster.type == cluster_pb2.Cluster.STRICT_DNS
    assert not cluster.HasField("eds_cluster_config")
    assert cluster.dns_lookup_family == cluster_pb2.Cluster.V4_PREFERRED
    assert cluster.dns_refresh_rate.ToMilliseconds() == 2500
    assert cluster.respect_dns_ttl is False
    resolver = cares_dns_resolver_pb2.CaresDnsResolverConfig()
    assert cluster.typed_dns_resolver_config.typed_config.Unpack(resolver)
    (server,) = resolver.resolvers
    assert (server.socket_address.address, server.socket_address.port_value) == (
        "10.96.0.10",
        53,
    )
    # Zone, weight and batcher port work as they do over EDS: the proxy's own
    # zone first, each replica through its batcher.
    by_zone = {
        locality.locality.zone: (
            locality.priority,
            [
                (
                    e.endpoint.address.socket_address.address,
                    e.endpoint.address.socket_address.port_value,
                    e.load_balancing_weight.value,
                )
                for e in locality.lb_endpoints
            ],
        )
        for locality in cluster.load_assignment.endpoints
    }
    assert by_zone == {
        "us-east-1a": (1, [("sentiment-v3.ml.svc", 9003, 1)]),
        "us-east-1b": (0, [("10.0.3.2", 8003, 2)]),
    }


def test_each_version_gets_one_load_assignment_named_like_its_cluster() -> None:
    assignments = translate(_state())[ENDPOINT]

    assert sorted(assignments) == ["sentiment/v1", "sentiment/v2"]
    for name, assignment in assignments.items():
        assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
        assert assignment.cluster_name == name


def test_endpoints_are_grouped_by_zone_into_localities() -> None:
    assignment = translate(_state())[ENDPOINT]["sentiment/v1"]
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)

    by_zone = {
        group.locality.zone: [e.endpoint.address.socket_address.address for e in group.lb_endpoints]
        for group in assignment.endpoints
    }
    assert by_zone == {"us-east-1a": ["10.0.0.2"], "us-east-1b": ["10.0.0.1", "10.0.0.3"]}


def test_endpoint_without_zone_lands_in_the_empty_locality() -> None:
    assignment = translate(_state())[ENDPOINT]["sentiment/v2"]
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)

    (group,) = assignment.endpoints
    assert group.locality.zone == ""
    (lb_endpoint,) = group.lb_endpoints
    assert lb_endpoint.endpoint.address.socket_address.port_value == 8002


def test_endpoint_carries_its_weight_and_accelerator_metadata() -> None:
    assignment = translate(_state())[ENDPOINT]["sentiment/v1"]
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
    endpoints = {
        e.endpoint.address.socket_address.address: e
        for group in assignment.endpoints
        for e in group.lb_endpoints
    }

    gpu = endpoints["10.0.0.1"]
    assert gpu.load_balancing_weight.value == 3
    assert gpu.metadata.filter_metadata["turnout"]["accelerator"] == "a100"
    plain = endpoints["10.0.0.2"]
    assert plain.load_balancing_weight.value == 1
    assert "turnout" not in plain.metadata.filter_metadata


def test_local_zone_gets_priority_0_and_the_other_zones_priority_1() -> None:
    assignment = translate(_state(), local_zone="us-east-1b")[ENDPOINT]["sentiment/v1"]
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)

    priorities = {group.locality.zone: group.priority for group in assignment.endpoints}
    assert priorities == {"us-east-1a": 1, "us-east-1b": 0}


def test_a_version_without_endpoints_in_the_local_zone_keeps_every_zone_at_priority_0() -> None:
    assignment = translate(_state(), local_zone="eu-west-1a")[ENDPOINT]["sentiment/v1"]
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)

    assert [group.priority for group in assignment.endpoints] == [0, 0]


def test_endpoint_zones_lists_each_labelled_zone_once_sorted() -> None:
    assert endpoint_zones(_state()) == ["us-east-1a", "us-east-1b"]


def test_path_route_matches_the_model_prefix_and_rewrites_it_to_slash() -> None:
    route = _route(_state(), "sentiment/path")

    assert route.match.path_separated_prefix == "/models/sentiment"
    assert route.route.regex_rewrite.pattern.regex == "^/models/sentiment/?"
    assert route.route.regex_rewrite.substitution == "/"


def test_header_route_matches_the_model_header_exactly() -> None:
    route = _route(_state(), "sentiment/header")

    assert route.match.prefix == "/"
    (header,) = route.match.headers
    assert header.name == MODEL_HEADER
    assert header.string_match.exact == "sentiment"
    assert not route.route.HasField("regex_rewrite")


def test_weighted_clusters_follow_weights_and_name_the_version_in_a_response_header() -> None:
    for kind in ("path", "header"):
        route = _route(_state(), f"sentiment/{kind}")

        weighted = {
            c.name: (
                c.weight.value,
                [(h.header.key, h.header.value) for h in c.response_headers_to_add],
            )
            for c in route.route.weighted_clusters.clusters
        }
        assert weighted == {
            "sentiment/v1": (80, [(VERSION_HEADER, "v1")]),
            "sentiment/v2": (20, [(VERSION_HEADER, "v2")]),
        }


def test_zero_weight_version_is_left_out_of_the_route_but_keeps_its_cluster() -> None:
    state = _state(_sentiment(weights=(("v1", 100), ("v2", 0))))

    route = _route(state, "sentiment/path")
    assert [c.name for c in route.route.weighted_clusters.clusters] == ["sentiment/v1"]
    assert "sentiment/v2" in translate(state)[CLUSTER]


def test_model_without_weight_answers_503_with_a_json_body() -> None:
    state = _state(_sentiment(weights=()))

    for kind in ("path", "header"):
        route = _route(state, f"sentiment/{kind}")
        assert not route.HasField("route")
        assert route.direct_response.status == 503
        body = json.loads(route.direct_response.body.inline_string)
        assert body["error"] == "no_serving_version"
        headers = {h.header.key: h.header.value for h in route.response_headers_to_add}
        assert headers["content-type"] == "application/json"


def test_routes_are_path_routes_then_header_routes_then_the_404_catch_all() -> None:
    other = ModelSpec(
        "classify", "http", (VersionSpec("v1", (EndpointSpec("10.0.2.1", 80),)),), (("v1", 1),)
    )
    routes = _routes(_state(other, _sentiment()))
    # Version pins (x-turnout-version) come right before each model's weighted route,
    # and each route that forwards has its stream twins right before it.
    names = [r.name for r in routes if "/pin" not in r.name]

    assert names == [
        "classify/path/stream-sse",
        "classify/path",
        "sentiment/path/stream-sse",
        "sentiment/path",
        "classify/header/stream-body",
        "classify/header/stream-sse",
        "classify/header",
        "sentiment/header/stream-body",
        "sentiment/header/stream-sse",
        "sentiment/header",
        "models-list",
        "openai-body/v1/chat/completions",
        "openai-body/v1/completions",
        "openai-body/v1/embeddings",
        "unknown-model",
    ]
    pins = [r.name for r in routes if "/pin" in r.name]
    assert pins[:4] == [
        "classify/path/pin/v1/stream-sse",
        "classify/path/pin/v1",
        "classify/path/pin-unknown",
        "sentiment/path/pin/v1/stream-sse",
    ]
    catch_all = routes[-1]
    assert catch_all.match.prefix == "/"
    assert not catch_all.match.headers
    assert catch_all.direct_response.status == 404
    assert json.loads(catch_all.direct_response.body.inline_string)["error"] == "model_not_found"


def test_empty_state_still_has_the_404_catch_all() -> None:
    routes = _routes(DesiredState(revision=0))

    # The model list and the OpenAI body-routing routes are always there.
    assert [r.name for r in routes if not r.name.startswith("openai-body/")] == [
        "models-list",
        "unknown-model",
    ]
    assert routes[-1].name == "unknown-model"


def _serialised(state: DesiredState, zone: str | None = None) -> dict[str, dict[str, bytes]]:
    return {
        type_url: {
            name: message.SerializeToString(deterministic=True) for name, message in by_name.items()
        }
        for type_url, by_name in translate(state, ListenerOptions(), zone).items()
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=desired_states())
def test_translate_is_deterministic(state: DesiredState) -> None:
    """Same state, same bytes: translated twice, and from an equal state built anew."""
    first = _serialised(state)
    assert _serialised(state) == first
    rebuilt = copy.deepcopy(state)
    assert rebuilt == state
    assert _serialised(rebuilt) == first
    for zone in endpoint_zones(state):
        assert _serialised(state, zone) == _serialised(rebuilt, zone)


_VERSIONS_OF = """
import json, sys
from controlplane.domain import policy, state
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.translate import endpoint_zones, translate

out = []
for state in eval(sys.stdin.read(), {**vars(policy), **vars(state)}):
    zones = [None, *endpoint_zones(state)]
    out.append([dict(Snapshot.from_resources(1, translate(state, local_zone=z)).versions)
                for z in zones])
print(json.dumps(out))
"""


# Each example starts two processes: no shrinking (a failure shows the whole list).
@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(states=st.lists(desired_states(), min_size=1, max_size=8))
def test_translate_gives_the_same_bytes_in_processes_with_other_hash_seeds(
    states: list[DesiredState],
) -> None:
    """Every replica translates alike: no set or dict order leaks into the bytes."""
    from controlplane.xds.snapshot import Snapshot

    here = [
        [
            dict(Snapshot.from_resources(1, translate(state, local_zone=zone)).versions)
            for zone in [None, *endpoint_zones(state)]
        ]
        for state in states
    ]
    for seed in ("0", "4242"):
        result = subprocess.run(
            [sys.executable, "-c", _VERSIONS_OF],
            input=repr(states),
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert json.loads(result.stdout) == here


def test_listener_binds_the_configured_host_and_port() -> None:
    listener = translate(_state(), ListenerOptions(host="0.0.0.0", port=10123))[LISTENER][
        LISTENER_NAME
    ]
    assert isinstance(listener, listener_pb2.Listener)

    assert listener.name == LISTENER_NAME
    assert listener.address.socket_address.address == "0.0.0.0"
    assert listener.address.socket_address.port_value == 10123


def test_listener_routes_come_from_rds_over_ads() -> None:
    listener = translate(_state())[LISTENER][LISTENER_NAME]
    assert isinstance(listener, listener_pb2.Listener)

    manager = _manager(listener)
    assert manager.WhichOneof("route_specifier") == "rds"
    assert manager.rds.route_config_name == ROUTE_CONFIG_NAME
    assert manager.rds.config_source.HasField("ads")


def test_listener_rejects_underscore_headers_and_normalises_paths() -> None:
    listener = translate(_state())[LISTENER][LISTENER_NAME]
    assert isinstance(listener, listener_pb2.Listener)

    manager = _manager(listener)
    assert (
        manager.common_http_protocol_options.headers_with_underscores_action
        == protocol_pb2.HttpProtocolOptions.REJECT_REQUEST
    )
    assert manager.normalize_path.value is True


@pytest.mark.envoy
def test_translated_resources_validate_with_envoy(tmp_path: Path) -> None:
    """Envoy itself accepts what we send: clusters as sent, endpoints and routes inlined."""
    # A name with "-" and "." checks that RE2 accepts the escaped rewrite pattern.
    unweighted = ModelSpec("idle-model.v2", "http", (VersionSpec("v1"),))
    _assert_envoy_accepts(translate(_state(unweighted, _sentiment())), tmp_path)


@pytest.mark.envoy
def test_a_traced_listener_validates_with_envoy(tmp_path: Path) -> None:
    traced = ListenerOptions(tracing=TracingOptions("otel-collector.example", 4317, 12.5))
    _assert_envoy_accepts(translate(_state(), traced), tmp_path)


@pytest.mark.envoy
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(state=desired_states())
def test_envoy_accepts_the_translation_of_any_valid_state(
    state: DesiredState, tmp_path: Path
) -> None:
    _assert_envoy_accepts(translate(state), tmp_path)


def _assert_envoy_accepts(resources: dict[str, dict[str, Message]], tmp_path: Path) -> None:
    listener = resources[LISTENER][LISTENER_NAME]
    assert isinstance(listener, listener_pb2.Listener)
    # Validate mode has no xDS server: inline the routes and give each assignment a
    # STATIC twin so that Envoy checks them too.
    manager = _manager(listener)
    manager.route_config.CopyFrom(resources[ROUTE][ROUTE_CONFIG_NAME])
    listener.filter_chains[0].filters[0].typed_config.Pack(manager)
    clusters: list[cluster_pb2.Cluster] = []
    for name, cluster in resources[CLUSTER].items():
        assert isinstance(cluster, cluster_pb2.Cluster)
        if name not in resources[ENDPOINT]:  # not an EDS cluster (the trace collector's)
            clusters.append(cluster)
            continue
        twin = cluster_pb2.Cluster(
            name=f"{name}-static",
            type=cluster_pb2.Cluster.STATIC,
            connect_timeout=duration_pb2.Duration(seconds=1),
        )
        twin.load_assignment.CopyFrom(resources[ENDPOINT][name])
        twin.load_assignment.cluster_name = twin.name
        clusters += [cluster, twin]
    bootstrap = render_bootstrap("n1", [XdsAddress("127.0.0.1", 18000)])
    bootstrap["static_resources"]["clusters"] += [json_format.MessageToDict(c) for c in clusters]
    bootstrap["static_resources"]["listeners"] = [json_format.MessageToDict(listener)]
    path = tmp_path / "translated.json"  # replaced by each example
    path.write_text(json.dumps(bootstrap))

    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def test_listener_does_not_share_its_port_unless_asked() -> None:
    alone = translate(_state())[LISTENER][LISTENER_NAME]
    assert isinstance(alone, listener_pb2.Listener)
    # Envoy's default (SO_REUSEPORT) would let a second mesh bind the same port.
    assert alone.HasField("enable_reuse_port") and not alone.enable_reuse_port.value
    shared = translate(_state(), ListenerOptions(reuse_port=True))[LISTENER][LISTENER_NAME]
    assert isinstance(shared, listener_pb2.Listener)
    assert shared.enable_reuse_port.value


def test_one_buffer_filter_first_and_body_routing_takes_the_largest_model_limit() -> None:
    large = 64 * 1024 * 1024
    state = _state(
        ModelSpec(
            name="big",
            protocol="openai",
            versions=(VersionSpec("v1", (EndpointSpec("10.0.2.1", 8003),)),),
            weights=(("v1", 100),),
            policy=ModelPolicy(max_request_bytes=large),
        ),
        _sentiment(),
    )
    listener = translate(state)[LISTENER][LISTENER_NAME]
    assert isinstance(listener, listener_pb2.Listener)
    names = [f.name for f in _manager(listener).http_filters]
    assert names.count(BODY_LIMIT_FILTER) == 1
    assert names[0] == BODY_LIMIT_FILTER
    body_routes = [r for r in _routes(state) if r.name.startswith("openai-body")]
    assert len(body_routes) == 3
    for route in body_routes:
        per_route = buffer_pb2.BufferPerRoute()
        assert route.typed_per_filter_config[BODY_LIMIT_FILTER].Unpack(per_route)
        assert per_route.buffer.max_request_bytes.value == large
