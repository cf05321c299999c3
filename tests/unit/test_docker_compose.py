"""docker-compose.yml is checked by parsing it: no Docker engine runs here.

It must run the image this repository builds (no pip at start), migrate once
before the replicas start, point Envoy at both replicas with the bootstrap the
CLI renders, register the model servers by their service names, publish the
README's ports on loopback, and keep secrets out of the file and the image.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from controlplane.settings import Settings
from examples.compose_demo import ENDPOINTS

ROOT = Path(__file__).resolve().parents[2]
TURNOUT_SERVICES = {
    "migrate",
    "controlplane-1",
    "controlplane-2",
    "demo-setup",
    "model-v1",
    "model-v2",
    "model-embed",
    "batcher",
}
REPLICAS = ("controlplane-1", "controlplane-2")


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _bootstraps() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bootstraps", ROOT / "deploy" / "bootstraps.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bootstraps"] = module
    spec.loader.exec_module(module)
    return module


def _env_file(path: str) -> dict[str, str]:
    pairs = {}
    for line in (ROOT / path).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_every_part_of_the_system_is_a_service() -> None:
    services = _services()
    assert {"postgres", "envoy", *TURNOUT_SERVICES} == set(services)
    assert services["postgres"]["image"].startswith("postgres:")


def test_turnout_services_run_the_built_image_without_installing_anything() -> None:
    services = _services()
    for name in TURNOUT_SERVICES:
        service = services[name]
        assert service["build"] == ".", name
        assert service["image"] == "turnout:local", name
        text = yaml.safe_dump({k: service.get(k) for k in ("entrypoint", "command")})
        assert "pip" not in text, f"{name} installs at start"
    assert (ROOT / "Dockerfile").exists()


def test_the_replicas_start_after_one_migration_job() -> None:
    services = _services()
    migrate = services["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in REPLICAS:
        replica = services[name]
        assert replica["command"] == ["serve"]
        assert replica["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}


def test_envoy_is_the_official_1_40_image_with_the_bootstrap_the_cli_renders() -> None:
    envoy = _services()["envoy"]
    assert re.fullmatch(r"envoyproxy/envoy:v1\.40[.\w-]*", envoy["image"])
    (mount,) = envoy["volumes"]
    source, target, mode = mount.split(":")
    assert mode == "ro"
    assert envoy["command"][envoy["command"].index("-c") + 1] == target
    bootstraps = _bootstraps()
    relative = source.removeprefix("./")
    arguments = bootstraps.BOOTSTRAPS[relative]
    assert (ROOT / relative).read_text() == bootstraps.render(arguments), (
        f"{relative} drifted from `turnout envoy bootstrap`: run python deploy/bootstraps.py"
    )
    xds_port = Settings().xds_port
    assert [_flag(arguments[i:], "--xds") for i, a in enumerate(arguments) if a == "--xds"] == [
        f"{name}:{xds_port}" for name in REPLICAS
    ]


def test_the_readme_ports_are_published_on_loopback() -> None:
    services = _services()
    defaults = Settings()
    assert (
        f"127.0.0.1:{defaults.api_port}:{defaults.api_port}" in services["controlplane-1"]["ports"]
    )
    assert (
        f"127.0.0.1:{defaults.listener_port}:{defaults.listener_port}" in services["envoy"]["ports"]
    )
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_model_servers_are_registered_by_their_service_names() -> None:
    services = _services()
    for (_, version), endpoint in ENDPOINTS.items():
        server = services[endpoint["address"]]
        assert server["entrypoint"] == ["python", "-m", "examples.model_server"]
        assert _flag(server["command"], "--port") == str(endpoint["port"])
        assert _flag(server["command"], "--version") == version
        assert _flag(server["command"], "--host") == "0.0.0.0"
        assert "networks" in server and "ipv4_address" not in str(server["networks"])
    (batched,) = [(key, e) for key, e in ENDPOINTS.items() if "batcher_port" in e]
    (model, version), endpoint = batched
    batcher = services["batcher"]
    assert batcher["network_mode"] == f"service:{endpoint['address']}"
    command = batcher["command"]
    assert command[0] == "batcher"
    assert _flag(command, "--listen") == f"0.0.0.0:{endpoint['batcher_port']}"
    assert _flag(command, "--upstream") == f"http://127.0.0.1:{endpoint['port']}"
    assert (_flag(command, "--model"), _flag(command, "--model-version")) == (model, version)
    assert batcher["depends_on"]["demo-setup"]["condition"] == "service_completed_successfully"
    setup = services["demo-setup"]
    assert setup["entrypoint"] == ["python", "-m", "examples.compose_demo"]
    assert setup["depends_on"]["controlplane-1"]["condition"] == "service_healthy"


def test_secrets_come_from_files_and_agree() -> None:
    compose = _compose()
    services = compose["services"]
    for name, service in services.items():
        environment = service.get("environment", {})
        for key, value in environment.items():
            assert "PASSWORD" not in key and "DATABASE_URL" not in key, (name, key)
            assert "KEY" not in key or key.endswith("_FILE"), (name, key)
            assert "example-only" not in str(value), (name, key)
        for env_file in service.get("env_file", []):
            assert (ROOT / env_file).exists(), env_file
    postgres = _env_file("deploy/compose/postgres.env")
    url = _env_file("deploy/compose/turnout.env")["TURNOUT_DATABASE_URL"]
    match = re.fullmatch(r"postgresql\+asyncpg://([^:]+):([^@]+)@postgres:5432/(\w+)", url)
    assert match, url
    assert match.groups() == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    for name in ("migrate", "demo-setup", *REPLICAS):
        assert "deploy/compose/turnout.env" in services[name]["env_file"], name
    secret_file = ROOT / compose["secrets"]["audit_key"]["file"]
    assert len(secret_file.read_text().strip()) >= 32
    # Whatever writes to the database appends audit events under the one key.
    for name in (*REPLICAS, "demo-setup"):
        assert services[name]["secrets"] == ["audit_key"]
        assert services[name]["environment"]["TURNOUT_AUDIT_KEY_FILE"] == "/run/secrets/audit_key"
    checkpoints = {services[n]["environment"]["TURNOUT_AUDIT_CHECKPOINT_FILE"] for n in REPLICAS}
    assert len(checkpoints) == len(REPLICAS), "each replica appends its own checkpoint file"


@pytest.mark.parametrize("name", sorted(TURNOUT_SERVICES | {"envoy", "postgres"}))
def test_mounted_files_exist(name: str) -> None:
    for mount in _services()[name].get("volumes", []):
        source = mount.split(":")[0]
        if source.startswith("."):
            assert (ROOT / source).exists(), mount
        else:
            assert source in _compose()["volumes"], mount
