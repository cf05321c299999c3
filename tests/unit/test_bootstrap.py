"""Envoy bootstrap rendering, checked by the real Envoy in validate mode, and its CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controlplane.bootstrap import XdsAddress, dump_bootstrap, render_bootstrap
from controlplane.processes import envoy_binary

TIMEOUT_S = 60
TURNOUT = Path(sys.executable).parent / "turnout"


def _validate_with_envoy(text: str, tmp_path: Path, name: str = "bootstrap.yaml") -> None:
    path = tmp_path / name
    path.write_text(text)
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def _xds_cluster(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = bootstrap["static_resources"]["clusters"]
    assert cluster["name"] == "turnout_xds"
    return cluster


def _endpoints(bootstrap: dict[str, Any]) -> list[tuple[str, int]]:
    return [
        (
            lb["endpoint"]["address"]["socket_address"]["address"],
            lb["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for group in _xds_cluster(bootstrap)["load_assignment"]["endpoints"]
        for lb in group["lb_endpoints"]
    ]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    # Settings come from TURNOUT_* variables; the test must not inherit any.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    return subprocess.run(
        [str(TURNOUT), *args], capture_output=True, text=True, env=env, timeout=TIMEOUT_S
    )


@pytest.mark.envoy
def test_rendered_bootstrap_validates_with_envoy(tmp_path: Path) -> None:
    bootstrap = render_bootstrap("n1", [XdsAddress("127.0.0.1", 18000)], admin_port=19901)

    _validate_with_envoy(dump_bootstrap(bootstrap), tmp_path)


@pytest.mark.envoy
def test_several_xds_addresses_become_several_endpoints_and_validate(tmp_path: Path) -> None:
    addresses = [XdsAddress("10.0.0.1", 18000), XdsAddress("10.0.0.2", 18001)]

    bootstrap = render_bootstrap("n1", addresses)

    assert _endpoints(bootstrap) == [("10.0.0.1", 18000), ("10.0.0.2", 18001)]
    assert _xds_cluster(bootstrap)["type"] == "STATIC"
    _validate_with_envoy(dump_bootstrap(bootstrap), tmp_path)


@pytest.mark.envoy
def test_a_host_name_switches_the_xds_cluster_to_strict_dns(tmp_path: Path) -> None:
    addresses = [XdsAddress("xds-0.turnout.internal", 18000), XdsAddress("10.0.0.2", 18000)]

    bootstrap = render_bootstrap("n1", addresses)

    assert _xds_cluster(bootstrap)["type"] == "STRICT_DNS"
    assert _endpoints(bootstrap) == [("xds-0.turnout.internal", 18000), ("10.0.0.2", 18000)]
    _validate_with_envoy(dump_bootstrap(bootstrap), tmp_path)


@pytest.mark.envoy
def test_delta_and_zone_options_render_and_validate(tmp_path: Path) -> None:
    bootstrap = render_bootstrap("n1", [XdsAddress("127.0.0.1", 18000)], delta=True, zone="b")

    assert bootstrap["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    assert bootstrap["node"]["locality"] == {"zone": "b"}
    _validate_with_envoy(dump_bootstrap(bootstrap), tmp_path)


def test_state_of_the_world_without_zone_is_the_default() -> None:
    bootstrap = render_bootstrap("n1", [XdsAddress("127.0.0.1", 18000)])

    assert bootstrap["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    assert "locality" not in bootstrap["node"]


def test_admin_is_bound_to_loopback_on_the_given_port() -> None:
    bootstrap = render_bootstrap("n1", [XdsAddress("127.0.0.1", 18000)], admin_port=19901)

    assert bootstrap["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 19901,
    }


def test_node_id_and_cluster_are_filled_in() -> None:
    bootstrap = render_bootstrap("edge-7", [XdsAddress("127.0.0.1", 18000)], node_cluster="edge")

    assert bootstrap["node"] == {"id": "edge-7", "cluster": "edge"}


def test_rendering_does_not_change_the_template() -> None:
    render_bootstrap("a", [XdsAddress("xds.internal", 1)], admin_port=1)

    again = render_bootstrap("b", [XdsAddress("127.0.0.1", 18000)])
    assert _xds_cluster(again)["type"] == "STATIC"
    assert _endpoints(again) == [("127.0.0.1", 18000)]


def test_empty_node_id_or_no_xds_address_is_refused() -> None:
    with pytest.raises(ValueError, match="node id"):
        render_bootstrap("", [XdsAddress("127.0.0.1", 18000)])
    with pytest.raises(ValueError, match="xDS address"):
        render_bootstrap("n1", [])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:18000", XdsAddress("127.0.0.1", 18000)),
        ("xds.internal:1", XdsAddress("xds.internal", 1)),
        ("[::1]:65535", XdsAddress("::1", 65535)),
    ],
)
def test_xds_address_parses_host_and_port(value: str, expected: XdsAddress) -> None:
    assert XdsAddress.parse(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "localhost", "localhost:", ":18000", "host:0", "host:65536", "host:http", "host:-1"],
)
def test_xds_address_rejects_a_bad_value_naming_it(value: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        XdsAddress.parse(value)


@pytest.mark.parametrize("value", ["::1", "10.0.0.1:80:18000"])
def test_xds_address_rejects_a_colon_in_an_unbracketed_host(value: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        XdsAddress.parse(value)


@pytest.mark.envoy
def test_cli_bootstrap_validates_with_envoy(tmp_path: Path) -> None:
    result = _cli("envoy", "bootstrap", "--node-id", "n1")

    assert result.returncode == 0, result.stderr
    assert "n1" in result.stdout
    _validate_with_envoy(result.stdout, tmp_path)


def test_cli_bootstrap_with_a_bad_xds_value_fails_on_stderr() -> None:
    result = _cli("envoy", "bootstrap", "--node-id", "n1", "--xds", "nope")

    assert result.returncode != 0
    assert "'nope'" in result.stderr
    assert result.stdout == ""
