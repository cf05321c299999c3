"""EndpointSlices to endpoints: which take traffic, their zones and ports, and how
they join the desired state; the stored document round-trips."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from controlplane.domain.discovery import (
    DiscoveredEndpoint,
    decode_discovered,
    encode_discovered,
    endpoints_of_slices,
    referenced_services,
    resolve,
    with_discovered,
)
from controlplane.domain.documents import decode_model, encode_model
from controlplane.domain.state import (
    DesiredState,
    EndpointSpec,
    KubernetesRef,
    ModelSpec,
    VersionSpec,
)
from tests.kube_api import slice_endpoint


def _slice(
    endpoints: list[dict[str, Any]],
    ports: list[dict[str, Any]] | None = None,
    address_type: str = "IPv4",
) -> dict[str, Any]:
    return {
        "metadata": {"name": "s", "resourceVersion": "1"},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}] if ports is None else ports,
    }


def test_ready_endpoints_take_traffic_and_not_ready_ones_do_not() -> None:
    found = endpoints_of_slices(
        [
            _slice(
                [
                    slice_endpoint("10.0.0.2", zone="b"),
                    slice_endpoint("10.0.0.1", zone="a"),
                    slice_endpoint("10.0.0.3", ready=False),
                ]
            )
        ]
    )
    assert found == (
        DiscoveredEndpoint("10.0.0.1", "a", (("http", 8080),)),
        DiscoveredEndpoint("10.0.0.2", "b", (("http", 8080),)),
    )


def test_unset_ready_reads_as_ready() -> None:
    assert [e.address for e in endpoints_of_slices([_slice([{"addresses": ["10.0.0.9"]}])])] == [
        "10.0.0.9"
    ]


def test_terminating_endpoints_serve_only_when_none_is_ready() -> None:
    draining = slice_endpoint("10.0.0.1", ready=False, serving=True, terminating=True)
    gone = slice_endpoint("10.0.0.2", ready=False, serving=False, terminating=True)
    assert [e.address for e in endpoints_of_slices([_slice([draining, gone])])] == ["10.0.0.1"]
    ready = slice_endpoint("10.0.0.3")
    assert [e.address for e in endpoints_of_slices([_slice([draining, ready])])] == ["10.0.0.3"]


def test_zone_comes_from_the_endpoint_or_its_deprecated_topology() -> None:
    old = {
        "addresses": ["10.0.0.1"],
        "deprecatedTopology": {"topology.kubernetes.io/zone": "eu-1a"},
    }
    none = {"addresses": ["10.0.0.2"]}
    found = endpoints_of_slices([_slice([old, none])])
    assert [(e.address, e.zone) for e in found] == [("10.0.0.1", "eu-1a"), ("10.0.0.2", None)]


def test_fqdn_slices_udp_ports_and_bad_addresses_are_left_out() -> None:
    fqdn = _slice([slice_endpoint("10.0.0.1")], address_type="FQDN")
    udp = _slice(
        [slice_endpoint("10.0.0.2")],
        ports=[
            {"name": "dns", "protocol": "UDP", "port": 53},
            {"name": "http", "protocol": "TCP", "port": 80},
        ],
    )
    named = _slice([{"addresses": ["pod.example"], "conditions": {"ready": True}}])
    found = endpoints_of_slices([fqdn, udp, named])
    assert found == (DiscoveredEndpoint("10.0.0.2", None, (("http", 80),)),)


def test_ipv6_addresses_are_normalised() -> None:
    found = endpoints_of_slices([_slice([slice_endpoint("FD00::0001")], address_type="IPv6")])
    assert [e.address for e in found] == ["fd00::1"]


def test_ports_resolve_by_name_or_number() -> None:
    found = endpoints_of_slices(
        [
            _slice(
                [slice_endpoint("10.0.0.1", zone="a")],
                ports=[
                    {"name": "http", "protocol": "TCP", "port": 8080},
                    {"name": "grpc", "protocol": "TCP", "port": 9000},
                ],
            ),
            # Another slice of the Service without the grpc port.
            _slice([slice_endpoint("10.0.0.2")], ports=[{"name": "http", "port": 8081}]),
        ]
    )
    http = resolve(KubernetesRef("ml", "s", "http"), found)
    assert http == (EndpointSpec("10.0.0.1", 8080, zone="a"), EndpointSpec("10.0.0.2", 8081))
    grpc = resolve(KubernetesRef("ml", "s", "grpc"), found)
    assert grpc == (EndpointSpec("10.0.0.1", 9000, zone="a"),)
    assert resolve(KubernetesRef("ml", "s", "metrics"), found) == ()
    numbered = resolve(KubernetesRef("ml", "s", 7000), found)
    assert [(e.address, e.port) for e in numbered] == [("10.0.0.1", 7000), ("10.0.0.2", 7000)]


def test_an_unnamed_port_has_the_empty_name() -> None:
    found = endpoints_of_slices(
        [_slice([slice_endpoint("10.0.0.1")], ports=[{"protocol": "TCP", "port": 80}])]
    )
    assert found[0].ports == (("", 80),)


def test_one_address_in_two_slices_is_one_endpoint() -> None:
    twice = [_slice([slice_endpoint("10.0.0.1")]), _slice([slice_endpoint("10.0.0.1")])]
    assert len(endpoints_of_slices(twice)) == 1


def _state() -> DesiredState:
    static = VersionSpec("v1", (EndpointSpec("10.9.9.9", 80),))
    discovered = VersionSpec("v2", kubernetes=KubernetesRef("ml", "sentiment-v2", "http"))
    other = ModelSpec("other", "http", (VersionSpec("v1", (EndpointSpec("10.8.8.8", 80),)),))
    model = ModelSpec("sentiment", "http", (static, discovered), (("v1", 50), ("v2", 50)))
    return DesiredState(revision=7, models=(other, model))


def test_discovered_endpoints_join_only_the_versions_that_name_the_service() -> None:
    state = _state()
    assert referenced_services(state) == {("ml", "sentiment-v2")}
    found = (DiscoveredEndpoint("10.0.0.1", "a", (("http", 8080),)),)
    merged = with_discovered(state, {("ml", "sentiment-v2"): found})
    assert merged.revision == 7
    model = merged.model("sentiment")
    assert model is not None
    assert model.versions[0] == state.models[1].versions[0]
    assert model.versions[1].endpoints == (EndpointSpec("10.0.0.1", 8080, zone="a"),)
    assert model.versions[1].kubernetes == KubernetesRef("ml", "sentiment-v2", "http")
    assert merged.model("other") is state.models[0]
    # Nothing discovered yet: the version has no endpoints.
    assert with_discovered(state, {}).model("sentiment").versions[1].endpoints == ()  # type: ignore[union-attr]


def test_a_state_without_references_is_returned_as_it_is() -> None:
    state = DesiredState(revision=1, models=(_state().models[0],))
    assert with_discovered(state, {("ml", "x"): ()}) is state


def test_a_version_document_without_a_reference_keeps_its_old_shape() -> None:
    model = _state().models[1]
    document = encode_model(model)
    assert "kubernetes" not in document["versions"][0]
    assert document["versions"][1]["kubernetes"] == {
        "namespace": "ml",
        "service": "sentiment-v2",
        "port": "http",
    }
    assert decode_model(document) == model


_addresses = st.ip_addresses().map(str)
_ports = st.lists(
    st.tuples(st.sampled_from(["", "http", "grpc"]), st.integers(1, 65535)),
    unique_by=lambda p: p[0],
).map(lambda ports: tuple(sorted(ports)))
_discovered = st.builds(
    DiscoveredEndpoint, _addresses, st.none() | st.sampled_from(["a", "us-east-1a"]), _ports
)


@given(st.lists(_discovered, max_size=5).map(tuple))
def test_the_stored_document_round_trips(endpoints: tuple[DiscoveredEndpoint, ...]) -> None:
    assert decode_discovered(encode_discovered(endpoints)) == endpoints
