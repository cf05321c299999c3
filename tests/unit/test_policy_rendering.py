"""Policies: the state document round trip, and Envoy accepting what they render to."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2

from controlplane.domain.documents import decode_state, encode_state
from controlplane.domain.policy import (
    CircuitBreakers,
    Experiment,
    HealthCheck,
    LoadBalancing,
    ModelPolicy,
    OutlierDetection,
    Retries,
    Shadow,
    Sticky,
    Timeouts,
    VersionPolicy,
)
from controlplane.domain.state import (
    DesiredState,
    EndpointSpec,
    ModelSpec,
    VersionSpec,
)
from controlplane.xds.resources import CLUSTER, ROUTE
from controlplane.xds.shadow import CLUSTER_HEADER, SHADOW_FILTER, tap_cluster_name
from controlplane.xds.snapshot import InconsistentSnapshot, Snapshot
from controlplane.xds.translate import ROUTE_CONFIG_NAME, translate
from tests.envoy_validate import envoy_validate

FULL_MODEL_POLICY = ModelPolicy(
    timeouts=Timeouts(request_timeout_ms=30_000, idle_timeout_ms=10_000),
    retries=Retries(
        retry_on=("5xx", "connect-failure", "retriable-status-codes"),
        num_retries=2,
        per_try_timeout_ms=5_000,
        retriable_status_codes=(429,),
        backoff_base_ms=25,
        backoff_max_ms=250,
        budget_percent=20.0,
        budget_min_concurrency=3,
    ),
    shadow=Shadow(version="v3", percent=12.5),
    experiments=(Experiment(header="x-tenant", value="acme", version="v2"),),
    sticky=Sticky(header="x-user-id"),
)
FULL_VERSION_POLICY = VersionPolicy(
    circuit_breakers=CircuitBreakers(
        max_connections=100, max_pending_requests=50, max_requests=200, max_retries=3
    ),
    outlier_detection=OutlierDetection(
        consecutive_5xx=3, interval_ms=1_000, base_ejection_time_ms=5_000, max_ejection_percent=50
    ),
    health_check=HealthCheck(
        path="/healthz", interval_ms=500, timeout_ms=250, healthy_threshold=1, unhealthy_threshold=2
    ),
    load_balancing=LoadBalancing(policy="ring_hash", hash_header="x-session"),
)


def _state() -> DesiredState:
    def version(name: str, port: int, policy: VersionPolicy) -> VersionSpec:
        endpoints = (
            EndpointSpec("127.0.0.1", port, zone="zone-a", accelerator="h100"),
            EndpointSpec("127.0.0.1", port + 1, zone="zone-b", accelerator="l4"),
        )
        return VersionSpec(name, endpoints, policy)

    return DesiredState(
        revision=7,
        models=(
            ModelSpec(
                "llama",
                "openai",
                (
                    version("v1", 9001, FULL_VERSION_POLICY),
                    version("v2", 9011, VersionPolicy()),
                    version("v3", 9021, VersionPolicy(health_check=HealthCheck())),
                ),
                (("v1", 70), ("v2", 30)),
                FULL_MODEL_POLICY,
            ),
            ModelSpec("plain", "http", (version("v1", 9031, VersionPolicy()),), (("v1", 100),)),
        ),
    )


def test_state_document_round_trips_policies_through_json() -> None:
    state = _state()
    document = json.loads(json.dumps(encode_state(state)))
    assert decode_state(document) == state


def test_documents_from_before_policies_load_with_empty_policies() -> None:
    document = json.loads(json.dumps(encode_state(_state())))
    for model in document["models"]:
        del model["policy"]
        for version in model["versions"]:
            del version["policy"]
    loaded = decode_state(document)
    assert all(m.policy == ModelPolicy() for m in loaded.models)
    assert all(v.policy == VersionPolicy() for m in loaded.models for v in m.versions)


def test_no_policy_keeps_the_defaults() -> None:
    resources = translate(_state())
    plain = resources[CLUSTER]["plain/v1"]
    assert isinstance(plain, cluster_pb2.Cluster)
    assert plain.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert not plain.HasField("circuit_breakers")
    assert not plain.HasField("outlier_detection")
    assert not plain.health_checks
    routes = resources[ROUTE][ROUTE_CONFIG_NAME]
    assert isinstance(routes, route_pb2.RouteConfiguration)
    split = next(r for r in routes.virtual_hosts[0].routes if r.name == "plain/path")
    assert split.route.timeout.seconds == 60
    assert not split.route.HasField("retry_policy")
    assert not split.route.request_mirror_policies


def test_every_policy_renders_to_config_that_envoy_accepts(tmp_path: Path) -> None:
    resources = translate(_state(), local_zone="zone-a")
    cluster = resources[CLUSTER]["llama/v1"]
    assert isinstance(cluster, cluster_pb2.Cluster)
    assert cluster.lb_policy == cluster_pb2.Cluster.RING_HASH
    assert cluster.circuit_breakers.thresholds[0].retry_budget.budget_percent.value == 20.0
    routes = resources[ROUTE][ROUTE_CONFIG_NAME]
    assert isinstance(routes, route_pb2.RouteConfiguration)
    split = next(r for r in routes.virtual_hosts[0].routes if r.name == "llama/header")
    assert split.route.weighted_clusters.use_hash_policy.value
    assert [h.header.header_name for h in split.route.hash_policy] == ["x-user-id", "x-session"]
    # The shadow compares (compare_percent's default): the script names the mirror's
    # cluster, on every route that mirrors, and the tap cluster carries compared ones.
    assert split.route.request_mirror_policies[0].cluster_header == CLUSTER_HEADER
    assert SHADOW_FILTER in split.typed_per_filter_config
    tap = resources[CLUSTER][tap_cluster_name("llama", "v3")]
    assert isinstance(tap, cluster_pb2.Cluster)
    # Its endpoints inline: a delta-xDS Envoy would not be sent llama/v3's again.
    assert tap.type == cluster_pb2.Cluster.STATIC
    ports = {
        e.endpoint.address.socket_address.port_value
        for group in tap.load_assignment.endpoints
        for e in group.lb_endpoints
    }
    assert ports == {9021, 9022}
    assert "configuration" in envoy_validate(resources, tmp_path)


def test_a_shadow_that_compares_nothing_mirrors_as_before() -> None:
    policy = replace(
        FULL_MODEL_POLICY, shadow=Shadow(version="v3", percent=12.5, compare_percent=0)
    )
    state = _state()
    state = replace(
        state,
        models=tuple(replace(m, policy=policy) if m.name == "llama" else m for m in state.models),
    )
    resources = translate(state)
    routes = resources[ROUTE][ROUTE_CONFIG_NAME]
    assert isinstance(routes, route_pb2.RouteConfiguration)
    split = next(r for r in routes.virtual_hosts[0].routes if r.name == "llama/header")
    assert split.route.request_mirror_policies[0].cluster == "llama/v3"
    assert (
        split.route.request_mirror_policies[0].runtime_fraction.default_value.numerator == 125_000
    )
    assert SHADOW_FILTER not in split.typed_per_filter_config
    assert tap_cluster_name("llama", "v3") not in resources[CLUSTER]


def test_a_route_to_a_missing_cluster_is_never_published() -> None:
    resources = translate(_state())
    del resources[CLUSTER]["llama/v3"]  # the shadow's cluster
    snapshot = Snapshot.from_resources(7, resources)
    with pytest.raises(InconsistentSnapshot, match="llama/v3"):
        snapshot.check_consistent()
    assert Snapshot.from_resources(7, translate(_state())).inconsistencies() == []


def test_the_tap_of_a_version_resolved_by_dns_resolves_it_too(tmp_path: Path) -> None:
    state = _state()
    llama = state.models[0]
    by_name = VersionSpec("v3", (EndpointSpec("localhost", 9021),), VersionPolicy())
    llama = replace(llama, versions=(*llama.versions[:2], by_name))
    resources = translate(replace(state, models=(llama, *state.models[1:])))
    tap = resources[CLUSTER][tap_cluster_name("llama", "v3")]
    assert isinstance(tap, cluster_pb2.Cluster)
    assert tap.type == cluster_pb2.Cluster.STRICT_DNS
    address = tap.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert address.socket_address.address == "localhost"
    assert not tap.health_checks
    assert "configuration" in envoy_validate(resources, tmp_path)
