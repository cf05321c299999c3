"""Snapshots: known type URLs only, consistency rules, content-hash versions, select()."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2
from google.protobuf.message import Message

from controlplane.domain.state import DesiredState, EndpointSpec, ModelSpec, VersionSpec
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE
from controlplane.xds.snapshot import InconsistentSnapshot, Snapshot, UnknownTypeUrl
from controlplane.xds.translate import translate


def _state(
    weights: tuple[tuple[str, int], ...] = (("v1", 50), ("v2", 50)),
    v2_port: int = 8002,
) -> DesiredState:
    model = ModelSpec(
        "sentiment",
        "http",
        (
            VersionSpec("v1", (EndpointSpec("10.0.0.1", 8001),)),
            VersionSpec("v2", (EndpointSpec("10.0.0.2", v2_port),)),
        ),
        weights,
    )
    return DesiredState(revision=1, models=(model,))


def _eds_cluster(name: str, service_name: str = "") -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(service_name=service_name),
    )


def _listener_with_rds(route_name: str) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="test",
        rds=hcm_pb2.Rds(
            config_source=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource()
            ),
            route_config_name=route_name,
        ),
    )
    packed = any_pb2.Any()
    packed.Pack(manager)
    return listener_pb2.Listener(
        name="l",
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name="hcm", typed_config=packed)]
            )
        ],
    )


def _names(packed: list[any_pb2.Any], message_type: type[Message]) -> list[str]:
    names = []
    for item in packed:
        message = message_type()
        assert item.Unpack(message)
        names.append(message.name)  # type: ignore[attr-defined]
    return names


def test_unknown_type_url_is_rejected() -> None:
    with pytest.raises(UnknownTypeUrl, match="Secret"):
        Snapshot.from_resources(
            1, {"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret": {}}
        )


def test_missing_types_are_present_and_empty() -> None:
    snapshot = Snapshot.from_resources(1, {})

    assert set(snapshot.resources) == set(PUSH_ORDER)
    assert all(not snapshot.resources[t] for t in PUSH_ORDER)


def test_translated_state_is_consistent() -> None:
    snapshot = Snapshot.from_resources(1, translate(_state()))

    assert snapshot.inconsistencies() == []
    assert snapshot.check_consistent() is snapshot


def test_eds_cluster_without_load_assignment_is_inconsistent() -> None:
    snapshot = Snapshot.from_resources(1, {CLUSTER: {"m/v1": _eds_cluster("m/v1")}})

    with pytest.raises(InconsistentSnapshot, match="'m/v1'"):
        snapshot.check_consistent()


def test_eds_cluster_needs_the_assignment_of_its_service_name() -> None:
    resources: dict[str, dict[str, Message]] = {
        CLUSTER: {"m/v1": _eds_cluster("m/v1", service_name="svc")},
        ENDPOINT: {"m/v1": translate(_state())[ENDPOINT]["sentiment/v1"]},
    }

    with pytest.raises(InconsistentSnapshot, match="'svc'"):
        Snapshot.from_resources(1, resources).check_consistent()


def test_static_cluster_needs_no_load_assignment() -> None:
    static = cluster_pb2.Cluster(name="s", type=cluster_pb2.Cluster.STATIC)

    assert Snapshot.from_resources(1, {CLUSTER: {"s": static}}).inconsistencies() == []


def test_listener_naming_a_missing_route_configuration_is_inconsistent() -> None:
    snapshot = Snapshot.from_resources(1, {LISTENER: {"l": _listener_with_rds("missing")}})

    with pytest.raises(InconsistentSnapshot, match="'missing'"):
        snapshot.check_consistent()


def test_listener_naming_a_present_route_configuration_is_consistent() -> None:
    snapshot = Snapshot.from_resources(
        1,
        {
            LISTENER: {"l": _listener_with_rds("r")},
            ROUTE: {"r": route_pb2.RouteConfiguration(name="r")},
        },
    )

    assert snapshot.inconsistencies() == []


def test_same_resources_give_the_same_versions_across_builds() -> None:
    first = Snapshot.from_resources(1, translate(_state()))
    second = Snapshot.from_resources(2, translate(_state()))

    assert dict(first.versions) == dict(second.versions)


def test_changing_only_the_routes_changes_only_the_route_version() -> None:
    before = Snapshot.from_resources(1, translate(_state(weights=(("v1", 50), ("v2", 50)))))
    after = Snapshot.from_resources(2, translate(_state(weights=(("v1", 90), ("v2", 10)))))

    changed = {t for t in PUSH_ORDER if before.version(t) != after.version(t)}
    assert changed == {ROUTE}


def test_changing_only_an_endpoint_changes_only_the_endpoint_version() -> None:
    before = Snapshot.from_resources(1, translate(_state(v2_port=8002)))
    after = Snapshot.from_resources(2, translate(_state(v2_port=8003)))

    changed = {t for t in PUSH_ORDER if before.version(t) != after.version(t)}
    assert changed == {ENDPOINT}


def test_select_with_no_names_returns_every_resource() -> None:
    snapshot = Snapshot.from_resources(1, translate(_state()))

    selected = snapshot.select(CLUSTER, frozenset())
    assert _names(selected, cluster_pb2.Cluster) == ["sentiment/v1", "sentiment/v2"]


def test_select_with_names_returns_only_those_present() -> None:
    snapshot = Snapshot.from_resources(1, translate(_state()))

    selected = snapshot.select(CLUSTER, frozenset({"sentiment/v2", "absent/v9"}))
    assert _names(selected, cluster_pb2.Cluster) == ["sentiment/v2"]
