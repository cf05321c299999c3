"""The console's static files at /console (no key, a strict Content-Security-Policy,
nothing audited) and GET /v1/whoami (any valid key), on SQLite and Postgres."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import httpx
import pytest

from controlplane.runtime import ControlPlane
from tests.conftest import api_client, seed_key

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = ROOT / "controlplane" / "console"


@pytest.mark.parametrize(
    ("role", "permissions"),
    [
        ("viewer", ["read"]),
        ("operator", ["read", "write"]),
        ("auditor", ["audit", "read"]),
        ("admin", ["audit", "keys", "read", "write"]),
    ],
)
async def test_whoami_tells_the_key_its_role_and_permissions(
    control_plane: ControlPlane, role: str, permissions: list[str]
) -> None:
    key = await seed_key(control_plane, role, name=f"who-{role}")
    async with api_client(control_plane, key) as client:
        answer = await client.get("/v1/whoami")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"name": f"who-{role}", "role": role, "permissions": permissions}


async def test_whoami_without_a_valid_key_is_401(anonymous_api: httpx.AsyncClient) -> None:
    for headers in ({}, {"authorization": "Bearer tk_" + "x" * 36}):
        answer = await anonymous_api.get("/v1/whoami", headers=headers)
        assert answer.status_code == 401
        assert answer.json()["error"] == "unauthenticated"


async def test_the_console_loads_without_a_key_and_is_not_audited(
    api: httpx.AsyncClient, anonymous_api: httpx.AsyncClient
) -> None:
    before = (await api.get("/v1/audit/events")).json()["items"]
    moved = await anonymous_api.get("/console")
    assert moved.status_code == 308 and moved.headers["location"] == "/console/"
    page = await anonymous_api.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    # Every file the page names is served from the package, with the same policy.
    assets = re.findall(r'(?:src|href)="([a-z.-]+)"', page.text)
    assert set(assets) >= {"app.js", "style.css"}
    for asset in [*assets, "chart.js"]:
        answer = await anonymous_api.get(f"/console/{asset}")
        assert answer.status_code == 200, asset
        assert answer.content == (CONSOLE / asset).read_bytes()
        assert answer.headers["content-security-policy"] == policy
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert (
        (await anonymous_api.get("/console/app.js"))
        .headers["content-type"]
        .startswith("text/javascript")
    )
    # Nothing else is reachable through it.
    missing = await anonymous_api.get("/console/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    for name in ("..%2Fsettings.py", "app.py", "APP.JS", "%2Fetc%2Fpasswd"):
        refused = await anonymous_api.get(f"/console/{name}")
        assert refused.status_code in (404, 422), name
        assert "error" in refused.json()
    assert (await api.get("/v1/audit/events")).json()["items"] == before


def test_every_console_file_ships_in_the_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["controlplane"]
    files = [p.relative_to(ROOT / "controlplane").as_posix() for p in CONSOLE.iterdir()]
    assert files
    for name in files:
        assert any(fnmatch(name, pattern) for pattern in patterns), name
