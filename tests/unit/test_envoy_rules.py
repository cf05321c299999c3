"""The API takes exactly what Envoy takes: checked against the real Envoy binary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from controlplane.api.policy_schemas import ModelPolicyBody
from controlplane.api.schemas import EndpointIn
from controlplane.domain.state import DesiredState, EndpointSpec, ModelSpec, VersionSpec
from controlplane.xds.translate import translate
from tests.envoy_validate import envoy_validate

ACCEPTED = ["127.0.0.1", "10.0.0.7", "::1", "2001:db8::7", "::ffff:10.0.0.1", "fe80::1"]
# Host names Envoy resolves itself (a STRICT_DNS cluster).
NAMES = ["localhost", "model.local", "sentiment-v2.ml.svc.cluster.local", "x" * 63 + ".example"]
REFUSED = [
    "::1%abc",
    "fe80::1%eth0",
    "fe80::1%1",
    "127.1",
    "010.0.0.1",
    "1.2.3",
    "",
    ".",
    "-model.local",
    "model-.local",
    "a..b",
    "under_score.local",
    "x" * 64 + ".example",
    "model.local/v1",
    "http://model.local",
    "model.local:8000",
    ("a" * 60 + ".") * 4 + "a" * 10,  # 254 characters: longer than DNS allows
]


def _state(addresses: list[str]) -> DesiredState:
    endpoints = tuple(
        EndpointIn(address=address, port=9000 + i).to_spec() for i, address in enumerate(addresses)
    )
    version = VersionSpec("v1", endpoints)
    return DesiredState(revision=1, models=(ModelSpec("m", "http", (version,), (("v1", 100),)),))


def test_every_address_the_api_takes_is_one_envoy_takes(tmp_path: Path) -> None:
    envoy_validate(translate(_state(ACCEPTED)), tmp_path)


def test_every_name_the_api_takes_is_one_envoy_resolves(tmp_path: Path) -> None:
    envoy_validate(translate(_state(NAMES)), tmp_path)
    envoy_validate(translate(_state([*NAMES, *ACCEPTED])), tmp_path)


@pytest.mark.parametrize(
    ("given", "stored"),
    [("Model.Local", "model.local"), ("model.local.", "model.local"), ("::0:1", "::1")],
)
def test_an_address_is_stored_in_one_form(given: str, stored: str) -> None:
    assert EndpointIn(address=given, port=80).address == stored


@pytest.mark.parametrize("address", REFUSED)
def test_addresses_envoy_would_reject_are_refused(address: str) -> None:
    with pytest.raises(ValidationError, match="address"):
        EndpointIn(address=address, port=80)


def test_a_zone_id_is_what_envoy_rejects(tmp_path: Path) -> None:
    # The rule above is Envoy's: the same state with a zone id fails validation.
    version = VersionSpec("v1", (EndpointSpec("::1%abc", 9000),))
    state = DesiredState(revision=1, models=(ModelSpec("m", "http", (version,), (("v1", 100),)),))
    resources = translate(state)
    with pytest.raises(AssertionError, match="malformed IP address"):
        envoy_validate(resources, tmp_path)


@pytest.mark.parametrize("value", ["a\nb", "a\r\nx-admin: 1", " acme", "acme ", "a\x00", ""])
def test_experiment_values_no_request_could_carry_are_refused(value: str) -> None:
    body = {"experiments": [{"header": "x-tenant", "value": value, "version": "v1"}]}
    with pytest.raises(ValidationError, match="value"):
        ModelPolicyBody.model_validate_json(json.dumps(body))
