"""The sync loop's packed translation renders exactly what ``translate`` renders."""

from __future__ import annotations

import json

import pytest

from controlplane.domain.policy import (
    Batching,
    CircuitBreakers,
    Experiment,
    ModelPolicy,
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
    TenantSpec,
    VersionSpec,
)
from controlplane.xds.packed import clear_caches, rotate_caches, translate_packed
from controlplane.xds.resources import PUSH_ORDER
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.translate import ListenerOptions, translate


def _rich_state(port: int = 8000) -> DesiredState:
    endpoints = (
        EndpointSpec("10.0.0.1", port, zone="a", accelerator="h100", weight=3, batcher_port=9100),
        EndpointSpec("10.0.0.2", port + 1, zone="b"),
    )
    policy = ModelPolicy(
        timeouts=Timeouts(request_timeout_ms=3000),
        retries=Retries(num_retries=2, per_try_timeout_ms=1000),
        shadow=Shadow(version="v2", percent=10.0),
        experiments=(Experiment(header="x-tenant", value="acme", version="v2"),),
        sticky=Sticky(header="x-user"),
    )
    chat = ModelSpec(
        "chat",
        "openai",
        (
            VersionSpec("v1", endpoints, VersionPolicy(batching=Batching())),
            VersionSpec("v2", endpoints[1:], VersionPolicy(circuit_breakers=CircuitBreakers(5))),
        ),
        (("v1", 70), ("v2", 30)),
        policy,
    )
    empty = ModelSpec("empty", "http")
    tenant = TenantSpec("acme", "sub-1", models=("chat",), revoked=("jti-9",))
    key = {
        "kty": "EC",
        "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        "kid": "k1",
        "alg": "ES256",
        "use": "sig",
    }
    jwks = json.dumps({"keys": [key]})
    return DesiredState(7, (chat, empty), (tenant,), jwks)


@pytest.mark.parametrize("zone", [None, "a", "b"])
def test_packed_translation_has_the_same_bytes_as_translate(zone: str | None) -> None:
    clear_caches()
    state = _rich_state()
    listener = ListenerOptions(port=10001)
    plain = Snapshot.from_resources(7, translate(state, listener, zone))
    for _ in range(2):  # cold, then memoised
        packed = Snapshot.from_packed(7, translate_packed(state, listener, zone))
        for type_url in PUSH_ORDER:
            assert packed.versions[type_url] == plain.versions[type_url], type_url
            assert dict(packed.resource_versions[type_url]) == dict(
                plain.resource_versions[type_url]
            )
            for name, resource in plain.resources[type_url].items():
                assert packed.resources[type_url][name].value == resource.value


def test_a_change_is_rendered_after_a_rotation() -> None:
    clear_caches()
    before = translate_packed(_rich_state(8000))
    rotate_caches()
    after = translate_packed(_rich_state(8100))
    name = "chat/v1"
    assert before[PUSH_ORDER[1]][name][1] != after[PUSH_ORDER[1]][name][1]
    expected = Snapshot.from_resources(1, translate(_rich_state(8100)))
    assert after[PUSH_ORDER[1]][name][1] == expected.resource_versions[PUSH_ORDER[1]][name]
