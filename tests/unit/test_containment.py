"""Containment alone: which models a NACK holds back, and when they are released."""

from __future__ import annotations

from controlplane.domain.state import DesiredState, EndpointSpec, ModelSpec, VersionSpec
from controlplane.xds.containment import Containment
from controlplane.xds.resources import CLUSTER, ENDPOINT, ROUTE
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.translate import translate

BAD = "::1%abc"
ERROR = f"malformed IP address: {BAD}. Consider setting resolver_name"


def _model(name: str, address: str = "127.0.0.1", port: int = 9001) -> ModelSpec:
    version = VersionSpec("v1", (EndpointSpec(address, port),))
    return ModelSpec(name, "http", (version,), (("v1", 100),))


def _state(revision: int, *models: ModelSpec) -> DesiredState:
    return DesiredState(revision=revision, models=tuple(sorted(models, key=lambda m: m.name)))


def _publish(containment: Containment, state: DesiredState) -> tuple[DesiredState, Snapshot]:
    effective = containment.apply(state)
    snapshot = Snapshot.from_resources(state.revision, translate(effective))
    containment.published(snapshot, effective)
    return effective, snapshot


def _accepted_start(*models: ModelSpec) -> Containment:
    containment = Containment()
    _, snapshot = _publish(containment, _state(1, *models))
    containment.accepted(snapshot)
    return containment


def test_the_one_changed_model_is_held_at_its_accepted_spec() -> None:
    a, b = _model("a"), _model("b")
    containment = _accepted_start(a, b)
    bad_b = _model("b", BAD)
    _, rejected = _publish(containment, _state(2, a, bad_b))

    holds = containment.rejected(rejected, ENDPOINT, ERROR, "edge-1")

    assert [(h.model, h.confirmed, h.resources) for h in holds] == [("b", True, ("b/v1",))]
    # Another model's change goes out; the held model stays as it was accepted.
    a2 = _model("a", port=9002)
    effective, _ = _publish(containment, _state(3, a2, bad_b))
    assert effective.model("a") == a2
    assert effective.model("b") == b
    assert effective.revision == 3


def test_a_model_never_accepted_is_left_out_while_held() -> None:
    a = _model("a")
    containment = _accepted_start(a)
    _, rejected = _publish(containment, _state(2, a, _model("new", BAD)))
    containment.rejected(rejected, ENDPOINT, ERROR, "edge-1")
    effective, _ = _publish(containment, _state(2, a, _model("new", BAD)))
    assert [m.name for m in effective.models] == ["a"]


def test_a_change_to_the_held_model_releases_it() -> None:
    containment = _accepted_start(_model("a"))
    _, rejected = _publish(containment, _state(2, _model("a", BAD)))
    containment.rejected(rejected, ENDPOINT, ERROR, "edge-1")
    assert containment.holds()
    fixed = _model("a", port=9005)
    effective, _ = _publish(containment, _state(3, fixed))
    assert effective.model("a") == fixed
    assert containment.holds() == []


def test_a_model_the_error_names_is_held_even_among_other_changes() -> None:
    a, b = _model("a"), _model("b")
    containment = _accepted_start(a, b)
    _, rejected = _publish(containment, _state(2, _model("a", port=9003), _model("b", port=9004)))
    error = "Error adding/updating cluster(s) b/v1: bad health check"
    holds = containment.rejected(rejected, CLUSTER, error, "edge-1")
    assert [(h.model, h.confirmed) for h in holds] == [("b", True)]


def test_routes_are_told_apart_by_their_route_names() -> None:
    containment = _accepted_start(_model("a"), _model("ab"))
    two = (VersionSpec("v1"), VersionSpec("v2"))
    ab = ModelSpec("ab", "http", two, (("v1", 50), ("v2", 50)))
    _, rejected = _publish(containment, _state(2, _model("a", port=2), ab))
    error = "route ab/path/pin/v1: invalid header"
    holds = containment.rejected(rejected, ROUTE, error, "edge-1")
    assert [h.model for h in holds] == ["ab"]
    assert holds[0].resources == ("turnout_routes",)


def test_several_suspects_are_bisected_until_the_culprit_is_alone() -> None:
    names = ["m0", "m1", "m2", "m3", "m4"]
    containment = _accepted_start(*(_model(n) for n in names))
    desired = _state(2, *(_model(n, BAD if n == "m3" else "127.0.0.2") for n in names))
    rounds = 0
    while True:
        rounds += 1
        assert rounds < 10, containment.holds()
        effective, snapshot = _publish(containment, desired)
        # What Envoy makes of it: the bad address anywhere in the endpoints is a NACK.
        bad = any(
            e.address == BAD for m in effective.models for v in m.versions for e in v.endpoints
        )
        if not bad:
            containment.accepted(snapshot)
            if not any(not h.confirmed for h in containment.holds()) and not containment._trial:
                break
        else:
            containment.rejected(snapshot, ENDPOINT, ERROR, "edge-1")
    assert [(h.model, h.confirmed) for h in containment.holds()] == [("m3", True)]
    final, _ = _publish(containment, desired)
    assert {m.name: m.versions[0].endpoints[0].address for m in final.models} == {
        "m0": "127.0.0.2",
        "m1": "127.0.0.2",
        "m2": "127.0.0.2",
        "m3": "127.0.0.1",
        "m4": "127.0.0.2",
    }


def test_a_nack_for_a_forgotten_snapshot_holds_nothing() -> None:
    containment = Containment()
    stranger = Snapshot.from_resources(7, translate(_state(7, _model("a", BAD))))
    assert containment.rejected(stranger, ENDPOINT, ERROR, "edge-1") == []
    assert containment.rejected(None, ENDPOINT, ERROR, "edge-1") == []
