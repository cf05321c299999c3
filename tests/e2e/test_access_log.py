"""Envoy's access log end to end: every request through a real Envoy leaves one JSON
line naming its model and version (controlplane.xds.access_log), and no credential.

Each request's answer carries its ``x-request-id``, so each log line is checked
against the answer of exactly that request.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.settings import Settings
from examples.synthetic import SyntheticServer
from filters.batcher import (
    RunningBatcher,
)
from tests.support import EnvoyProcess, RunningModelServer, applied, eventually

pytestmark = pytest.mark.envoy

SECRET = "SECRET-9f3a"
BATCHED = 8
NUMBERS = ("status", "duration_ms", "bytes_received", "bytes_sent", "upstream_attempts")


@pytest.fixture
def access_log(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


@pytest.fixture
def settings(settings: Settings, access_log: Path) -> Settings:
    # The summary is polled below: keep its copy short-lived.
    return settings.model_copy(update={"access_log_path": str(access_log), "metrics_cache_s": 0.5})


async def _declare(
    api: httpx.AsyncClient,
    servers: dict[str, RunningModelServer],
    batcher: RunningBatcher,
    synthetic_port: int,
) -> str:
    """Declare the models: sentiment (v1 and v2 at 50/50), embedder (v1, batched) and
    secret (granted to tenant acme only); return a credential of acme."""

    async def ok(response: httpx.Response) -> dict[str, Any]:
        assert response.is_success, response.text
        body: dict[str, Any] = response.json()
        return body

    def endpoint(port: int) -> dict[str, Any]:
        return {"address": "127.0.0.1", "port": port}

    for name, protocol in (("sentiment", "http"), ("embedder", "kserve-v2"), ("secret", "http")):
        await ok(await api.post("/v1/models", json={"name": name, "protocol": protocol}))
    for version, server in servers.items():
        body = {"version": version, "endpoints": [endpoint(server.port)]}
        await ok(await api.post("/v1/models/sentiment/versions", json=body))
    weights = {"weights": {"v1": 50, "v2": 50}}
    await ok(await api.put("/v1/models/sentiment/traffic", json=weights))
    batched = {**endpoint(synthetic_port), "batcher_port": batcher.port}
    await ok(
        await api.post(
            "/v1/models/embedder/versions", json={"version": "v1", "endpoints": [batched]}
        )
    )
    policy = {"batching": {"enabled": True, "max_batch_size": 16, "slo_ms": 30_000}}
    await ok(await api.put("/v1/models/embedder/versions/v1/policy", json=policy))
    body = {"version": "v1", "endpoints": [endpoint(servers["v1"].port)]}
    await ok(await api.post("/v1/models/secret/versions", json=body))
    rate = {"requests_per_second": 1000, "burst": 1000}
    await ok(
        await api.post(
            "/v1/tenants", json={"name": "acme", "models": ["secret"], "rate_limit": rate}
        )
    )
    token: str = (await ok(await api.post("/v1/tenants/acme/credentials")))["token"]

    async def batching_on() -> bool:
        async with httpx.AsyncClient(timeout=5) as client:
            state = (await client.get(f"{batcher.url}/turnout/batcher")).json()
        return bool(state["policy"]["enabled"])

    await eventually(batching_on, timeout=10)
    return token


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_every_request_leaves_one_json_line_without_credentials(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    model_servers: dict[str, RunningModelServer],
    batcher: RunningBatcher,
    synthetic: tuple[SyntheticServer, int],
    access_log: Path,
) -> None:
    token = await _declare(api, model_servers, batcher, synthetic[1])
    await applied(api, envoy.node_id, timeout=10)
    # Envoy may have logged requests while the config arrived: count from here.
    before = len(_lines(access_log))
    answers: list[httpx.Response] = []
    secrets = {
        "authorization": f"Bearer {SECRET}",
        "x-api-key": SECRET,
        "cookie": f"session={SECRET}",
        # Envoy drops it from outside requests: the log keeps the path sent.
        "x-envoy-original-path": "/forged",
    }
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=30) as client:
        for _ in range(10):
            answers.append(
                await client.post(
                    f"/models/sentiment/predict?api_key={SECRET}",
                    headers=secrets,
                    content=f'{{"text": "{SECRET}"}}',
                )
            )
        # A version that does not exist: a local 404 that still names the model.
        answers.append(
            await client.get("/models/sentiment/predict", headers={"x-turnout-version": "v9"})
        )
        infer = "/models/embedder/v2/models/embedder/infer"
        answers += await asyncio.gather(
            *(
                client.post(
                    infer,
                    json={
                        "id": f"r{i}",
                        "inputs": [
                            {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [i, -i]}
                        ],
                    },
                )
                for i in range(BATCHED)
            )
        )
        answers.append(await client.get("/models/secret/predict"))
        answers.append(
            await client.get("/models/secret/predict", headers={"authorization": f"Bearer {token}"})
        )

    async def logged() -> list[dict[str, Any]] | None:
        lines = _lines(access_log)[before:]
        return lines if len(lines) >= len(answers) else None

    lines = await eventually(logged, timeout=15)
    assert len(lines) == len(answers), lines
    by_id = {line["request_id"]: line for line in lines}
    assert len(by_id) == len(lines), "a request id appears on two lines"
    for answer in answers:
        line = by_id[answer.headers["x-request-id"]]
        path = answer.request.url.path
        assert (line["method"], line["path"], line["status"]) == (
            answer.request.method,
            path,
            answer.status_code,
        ), line
        assert line["model"] == path.split("/")[2], line
        datetime.fromisoformat(line["time"])
        for field in NUMBERS:
            assert isinstance(line[field], int), (field, line)
        if line["upstream_host"] is not None:  # a model server answered
            assert line["version"] == answer.headers["x-turnout-version"], line
            assert line["upstream_attempts"] >= 1, line
            assert isinstance(line["upstream_duration_ms"], int), line
            assert line["duration_ms"] >= line["upstream_duration_ms"], line
        else:  # Envoy answered itself
            assert line["upstream_attempts"] == 0, line
            assert line["upstream_duration_ms"] is None, line
        batch_size = answer.headers.get("x-turnout-batch-size")
        assert line["batch_size"] == batch_size, line
        assert line["queue_wait_us"] == answer.headers.get("x-turnout-queue-wait-us"), line

    split = [line for line in lines if line["model"] == "sentiment" and line["status"] == 200]
    assert len(split) == 10 and {line["version"] for line in split} <= {"v1", "v2"}
    unknown = [line for line in lines if line["status"] == 404]
    assert [(u["model"], u["version"]) for u in unknown] == [("sentiment", None)]

    batched = [line for line in lines if line["model"] == "embedder"]
    assert len(batched) == BATCHED
    assert all(line["status"] == 200 and line["version"] == "v1" for line in batched), batched
    assert all(int(line["batch_size"]) >= 1 for line in batched), batched
    assert all(int(line["queue_wait_us"]) >= 0 for line in batched), batched

    secret = sorted(
        (line for line in lines if line["model"] == "secret"), key=lambda x: x["status"]
    )
    assert [(line["status"], line["tenant"]) for line in secret] == [(200, "acme"), (401, None)]
    # Refused after routing: the version the request was routed to, no upstream.
    assert [(line["version"], line["upstream_host"]) for line in secret][1] == ("v1", None)
    assert secret[0]["tenant_subject"] and secret[1]["tenant_subject"] is None

    # The traffic window (Envoy's stat sink) counts the same requests: per tenant by
    # name, and the batcher's figures per version.
    async def counted() -> dict[str, Any] | None:
        summary = await api.get("/v1/metrics/summary", params={"window": "5m"})
        assert summary.status_code == 200, summary.text
        body: dict[str, Any] = summary.json()
        tenants = {t["tenant"]: t["responses"] for t in body["tenants"]}
        [embedder] = [m for m in body["models"] if m["model"] == "embedder"]
        batching = embedder["versions"][0]["batching"]
        done = tenants.get("-", {}).get("401") and batching and batching["requests"] >= BATCHED
        return {"tenants": tenants, "batching": batching} if done else None

    window = await eventually(counted, timeout=15)
    assert window["tenants"]["acme"] == {"200": 1}
    assert window["tenants"]["-"]["401"] == 1
    sizes = [int(line["batch_size"]) for line in batched]
    assert window["batching"]["requests"] == BATCHED
    assert window["batching"]["mean_batch_size"] == pytest.approx(sum(sizes) / len(sizes), rel=0.05)

    text = await asyncio.to_thread(access_log.read_text)
    assert SECRET not in text
    assert token not in text and token.split(".")[2] not in text
