"""docker-compose.yml is checked by parsing it: no Docker engine runs here."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_every_part_of_the_system_is_a_service_from_a_public_image() -> None:
    services = _compose()["services"]
    assert {"postgres", "controlplane", "envoy", "model-v1", "model-v2"} <= set(services)
    for name, service in services.items():
        assert "build" not in service, f"{name} must use a public image"
        assert "/" in service["image"] or ":" in service["image"], name


def test_controlplane_uses_postgres_and_real_cli_commands() -> None:
    service = _compose()["services"]["controlplane"]
    env = service["environment"]
    assert env["TURNOUT_DATABASE_URL"].startswith("postgresql+asyncpg://")
    command = " ".join(service["command"])
    for subcommand in ("db upgrade", "envoy bootstrap", "serve"):
        assert subcommand in command
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_model_servers_have_fixed_addresses_inside_the_subnet() -> None:
    compose = _compose()
    subnet = ipaddress.ip_network(compose["networks"]["mesh"]["ipam"]["config"][0]["subnet"])
    for name in ("model-v1", "model-v2"):
        address = compose["services"][name]["networks"]["mesh"]["ipv4_address"]
        assert ipaddress.ip_address(address) in subnet
    assert (ROOT / "examples" / "model_server.py").exists()


def test_published_ports_are_bound_to_loopback() -> None:
    for service in _compose()["services"].values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
