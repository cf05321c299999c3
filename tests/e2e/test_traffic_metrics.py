"""Each version's traffic, from real Envoy's stat sink to the metrics API and /metrics.

A model at 90/10: v1 answers after 50 ms, v2 fails every fifth call with 500.
After 2,000 requests the control plane must show what the client saw.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from examples.model_server import bound_port
from tests.conftest import sqlite_copy
from tests.support import EnvoyProcess, applied, eventually

pytestmark = pytest.mark.envoy

MODEL = "observed"
REQUESTS = 2000


@pytest.fixture
async def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    # What this test checks does not depend on the database: SQLite only.
    return sqlite_copy(tmp_path, sqlite_template)


class ScriptedServer:
    """A model server double: answers after ``delay_s``; every ``fail_every``-th
    call fails with 500."""

    def __init__(self, version: str, *, delay_s: float = 0.0, fail_every: int = 0) -> None:
        self.version = version
        self.delay_s = delay_s
        self.fail_every = fail_every
        self.calls = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status = 500 if self.fail_every and self.calls % self.fail_every == 0 else 200
        return web.json_response({"version": self.version}, status=status)

    async def start(self) -> ScriptedServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = bound_port(self._runner)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, ScriptedServer]]:
    started = {
        "v1": await ScriptedServer("v1", delay_s=0.05).start(),
        "v2": await ScriptedServer("v2", fail_every=5).start(),
    }
    try:
        yield started
    finally:
        for server in started.values():
            await server.stop()


async def _register(api: httpx.AsyncClient, servers: dict[str, ScriptedServer]) -> None:
    response = await api.post("/v1/models", json={"name": MODEL, "protocol": "http"})
    assert response.status_code == 201, response.text
    for version, server in servers.items():
        response = await api.post(
            f"/v1/models/{MODEL}/versions",
            json={"version": version, "endpoints": [{"address": "127.0.0.1", "port": server.port}]},
        )
        assert response.status_code == 201, response.text
    response = await api.put(f"/v1/models/{MODEL}/traffic", json={"weights": {"v1": 90, "v2": 10}})
    assert response.status_code == 200, response.text


async def _send(url: str, total: int) -> Counter[tuple[str, int]]:
    """Send ``total`` requests, 32 at a time; count (version, status) as the client saw them."""
    semaphore = asyncio.Semaphore(32)
    seen: Counter[tuple[str, int]] = Counter()
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one() -> None:
            async with semaphore:
                response = await client.post(url, json={"inputs": [1]})
                seen[(response.headers.get("x-turnout-version", "?"), response.status_code)] += 1

        await asyncio.gather(*(one() for _ in range(total)))
    return seen


async def test_versions_show_what_the_client_saw(
    api: httpx.AsyncClient,
    anonymous_api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    servers: dict[str, ScriptedServer],
) -> None:
    await _register(api, servers)
    await applied(api, envoy.node_id, timeout=10)
    seen = await _send(f"{envoy.base_url}/models/{MODEL}/predict", REQUESTS)
    sent = Counter[str]()
    for (version, _), n in seen.items():
        sent[version] += n
    assert set(sent) == {"v1", "v2"}, seen

    async def figures() -> dict[str, object] | None:
        response = await api.get(f"/v1/models/{MODEL}/metrics", params={"window": "120s"})
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        total = body["total"]
        assert isinstance(total, dict)
        # Every flush has arrived once the window counts every request.
        return body if total["requests"] >= REQUESTS else None

    body = await eventually(figures, timeout=15)
    assert body is not None
    assert body["total"]["requests"] == REQUESTS  # type: ignore[index]
    versions = {v["version"]: v for v in body["versions"]}  # type: ignore[attr-defined]
    v1, v2 = versions["v1"], versions["v2"]
    assert (v1["weight"], v2["weight"]) == (90, 10)
    for name, version in versions.items():
        assert abs(version["requests"] - sent[name]) <= 0.02 * sent[name], (name, version, sent)
        assert version["responses"] == {
            str(status): n for (v, status), n in seen.items() if v == name
        }
    assert abs(v2["error_rate"] - 0.20) <= 0.05, v2
    assert v2["classes"]["5xx"] == v2["errors"]
    assert v1["error_rate"] == 0, v1
    assert v1["latency_ms"]["p50"] >= 50, v1
    assert v1["latency_samples"] >= 0.98 * sent["v1"]
    assert v2["latency_ms"]["p50"] < v1["latency_ms"]["p50"], (v1, v2)

    summary = await api.get("/v1/metrics/summary", params={"window": "2m"})
    assert summary.status_code == 200, summary.text
    [model] = [m for m in summary.json()["models"] if m["model"] == MODEL]
    assert model["total"]["requests"] == REQUESTS

    # Prometheus: the same counts, no key needed, and a histogram per version.
    exposition = await anonymous_api.get("/metrics")
    assert exposition.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(exposition.text)}
    requests = {
        s.labels["version"]: s.value
        for s in families["turnout_model_requests"].samples
        if s.labels["model"] == MODEL and s.name == "turnout_model_requests_total"
    }
    assert requests == {"v1": v1["requests"], "v2": v2["requests"]}
    errors = sum(
        s.value
        for s in families["turnout_model_responses"].samples
        if s.labels["model"] == MODEL and s.labels["version"] == "v2" and s.labels["code"] == "500"
    )
    assert errors == v2["errors"]
    counts = [
        s.value
        for s in families["turnout_model_upstream_latency_seconds"].samples
        if s.name.endswith("_count") and s.labels["version"] == "v1"
    ]
    assert counts == [v1["latency_samples"]]

    # `turnout top --once`: a row per version with the same figures.
    table = await _turnout_top(api, "--once", "--window", "2m", "--model", MODEL)
    rows = {line.split()[1]: line.split() for line in table.splitlines()[2:]}
    assert set(rows) == {"v1", "v2", "(all)"}, table
    assert rows["v1"][2] == "90%" and rows["v2"][2] == "10%"
    assert rows["v2"][4] == f"{v2['error_rate'] * 100:.1f}%"
    assert float(rows["v1"][5]) == pytest.approx(v1["latency_ms"]["p50"], abs=0.05)


def _cli_environment(api: httpx.AsyncClient) -> dict[str, str]:
    """The environment of a `turnout` command that reads ``api``'s control plane."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    environment["TURNOUT_API_KEY"] = api.headers["authorization"].removeprefix("Bearer ")
    environment["TURNOUT_API_PORT"] = str(api.base_url.port)
    return environment


async def _turnout_top(api: httpx.AsyncClient, *args: str) -> str:
    """Run the `turnout top` command against ``api``'s control plane; return its output."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "turnout"),
        "top",
        *args,
        env=_cli_environment(api),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_window_must_be_a_duration_within_the_retention(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/models", json={"name": MODEL, "protocol": "http"})
    assert response.status_code == 201
    for window in ("soon", "0s", "-5s", "2h"):
        response = await api.get(f"/v1/models/{MODEL}/metrics", params={"window": window})
        assert response.status_code == 422, (window, response.text)
        assert response.json()["error"] == "invalid_input"
    response = await api.get("/v1/models/nothing/metrics")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    response = await api.get(f"/v1/models/{MODEL}/metrics", params={"window": "5m"})
    assert response.status_code == 200
    assert response.json()["total"]["requests"] == 0


async def test_top_redraws_until_interrupted(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/models", json={"name": MODEL, "protocol": "http"})
    assert response.status_code == 201
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "turnout"),
        "top",
        "--interval",
        "0.2",
        env=_cli_environment(api),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # A shell's background job ignores SIGINT, and a child inherits that: undo it,
        # as a terminal's Ctrl-C would find it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    seen = b""
    try:
        # Two frames drawn: it refreshes on its own.
        while seen.count(b"MODEL") < 2:
            chunk = await asyncio.wait_for(process.stdout.read(4096), timeout=30)
            assert chunk, (seen, await process.stderr.read() if process.stderr else b"")
            seen += chunk
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = await asyncio.wait_for(process.wait(), timeout=30)
        except TimeoutError:
            process.kill()
            raise
    assert code == 0
    assert f"{MODEL}  v".encode() not in seen  # no versions yet: no rows
    assert b"MODEL" in seen
