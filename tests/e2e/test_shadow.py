"""Shadow comparisons end to end: admin API -> xDS -> real Envoy, whose scripts tee
both answers of sampled requests to the control plane, which pairs, compares and
summarises them (GET /v1/models/{model}/shadow).

The model servers answer KServe v2 tensors. Which requests are mirrored and
compared follows from each request's id (controlplane.xds.shadow.sampled, the
same hash as Envoy's script), and the differing shadow's answers too, so every
count the tests wait for is exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from sqlalchemy import select

from controlplane.db.models import ShadowComparison
from controlplane.runtime import ControlPlane
from controlplane.xds.shadow import sampled
from examples.model_server import bound_port
from tests.support import EnvoyProcess, applied, eventually

pytestmark = pytest.mark.envoy

MODEL = "embed"
URL = f"/models/{MODEL}/v2/models/{MODEL}/infer"
DATA = [1.0, 2.0, 3.0, 4.0]


def differs(request_id: str) -> str | None:
    """How the differing shadow answers this request: "status" (503), "numbers"
    (one output off by 0.5) or None (as the primary), about 30% differing."""
    digest = hashlib.sha256(request_id.encode()).digest()
    if digest[0] % 10 >= 3:
        return None
    return "status" if digest[1] % 2 == 0 else "numbers"


@dataclass
class TensorServer:
    """A KServe v2 model server; ``differ`` makes it answer ~30% of requests
    differently (:func:`differs`); a request whose body asks for ``"big": n``
    gets an answer padded to more than n bytes."""

    __test__ = False

    version: str
    differ: bool = False
    openai: bool = False
    request_ids: list[str] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> TensorServer:
        application = web.Application()
        application.router.add_route("*", "/{tail:.*}", self._infer)
        self._runner = web.AppRunner(application, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = bound_port(self._runner)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def endpoint(self) -> dict[str, object]:
        return {"address": "127.0.0.1", "port": self.port}

    async def _infer(self, request: web.Request) -> web.Response:
        body = await request.json()
        request_id = request.headers.get("x-request-id", "")
        self.request_ids.append(request_id)
        how = differs(request_id) if self.differ else None
        if how == "status":
            return web.json_response({"error": "overloaded"}, status=503)
        data = list(DATA)
        if how == "numbers":
            data[2] += 0.5
        answer: dict[str, Any] = {
            # Differ between versions, and are left out of the comparison.
            "model_name": MODEL,
            "model_version": self.version,
            "outputs": [{"name": "y", "shape": [4], "datatype": "FP32", "data": data}],
        }
        if self.openai:
            answer = {
                "object": "list",
                "model": f"{MODEL}-{self.version}",  # left out of the comparison
                "data": [{"object": "embedding", "index": 0, "embedding": data}],
            }
        if body.get("big"):
            answer["padding"] = "x" * int(body["big"])
        return web.json_response(answer)


@pytest.fixture
async def tensor_servers() -> AsyncIterator[Callable[..., Any]]:
    started: list[TensorServer] = []

    async def start(version: str, differ: bool = False, openai: bool = False) -> TensorServer:
        server = await TensorServer(version, differ, openai).start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.stop()


async def _setup(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    primary: TensorServer,
    shadow: TensorServer,
    protocol: str = "kserve-v2",
    **policy: Any,
) -> None:
    async def ok(response: httpx.Response) -> None:
        assert response.status_code in (200, 201), response.text

    await ok(await api.post("/v1/models", json={"name": MODEL, "protocol": protocol}))
    for name, server in (("v1", primary), ("v2", shadow)):
        body = {"version": name, "endpoints": [server.endpoint()]}
        await ok(await api.post(f"/v1/models/{MODEL}/versions", json=body))
    await ok(await api.put(f"/v1/models/{MODEL}/traffic", json={"weights": {"v1": 100}}))
    shadow_policy = {"version": "v2", **policy}
    await ok(await api.put(f"/v1/models/{MODEL}/policy", json={"shadow": shadow_policy}))
    await applied(api, envoy.node_id, timeout=15)


async def _send(envoy: EnvoyProcess, bodies: list[dict[str, Any]]) -> list[str]:
    """Send ``bodies`` (8 at a time); return the request id of each answer."""
    semaphore = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=10) as client:

        async def one(body: dict[str, Any]) -> str:
            async with semaphore:
                response = await client.post(URL, json={"inputs": [], **body})
            # Clients only ever see the primary's answer.
            assert response.status_code == 200, response.text
            assert response.json()["model_version"] == "v1"
            return response.headers["x-request-id"]

        return await asyncio.gather(*(one(b) for b in bodies))


async def _summary_with(api: httpx.AsyncClient, compared: int) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        response = await api.get(f"/v1/models/{MODEL}/shadow", params={"window": "300s"})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["compared"] <= compared, body
        return body if body["compared"] == compared else None

    # Each half is a report of its own, paired within a second or through the
    # database: on a loaded machine the last ones may take a while.
    return await eventually(probe, timeout=60)


async def _rows(control_plane: ControlPlane) -> list[ShadowComparison]:
    async with control_plane.sessionmaker() as session:
        return list((await session.scalars(select(ShadowComparison))).all())


async def test_identical_versions_agree_on_every_compared_request(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    control_plane: ControlPlane,
    tensor_servers: Callable[..., Any],
) -> None:
    primary, shadow = await tensor_servers("v1"), await tensor_servers("v2")
    await _setup(api, envoy, primary, shadow, percent=60, compare_percent=70)
    ids = await _send(envoy, [{} for _ in range(80)])
    decisions = [sampled(i, 60, 70) for i in ids]
    compared = sum(1 for _, c in decisions if c)
    mirrored = sum(1 for m, _ in decisions if m)
    assert compared > 10, decisions  # 80 x 0.6 x 0.7, about 34

    summary = await _summary_with(api, compared)
    assert summary["agreement_rate"] == 1.0
    assert summary["status_agreement_rate"] == 1.0
    assert summary["body_compared"] == compared
    assert summary["body_agreement_rate"] == 1.0
    assert summary["numeric_compared"] == compared
    assert summary["max_abs_diff"] == 0.0
    assert summary["min_cosine"] == 1.0
    assert summary["disagreements"] == []
    assert summary["latency_diff_ms"]["p50"] is not None
    assert summary["note"] is None
    # The script's sampling is Envoy's mirror: exactly the mirrored ids reached v2.
    await eventually(lambda: _at_least(shadow, mirrored), timeout=10)
    expected = sorted(i for i, (m, _) in zip(ids, decisions, strict=True) if m)
    assert sorted(shadow.request_ids) == expected
    # keep_bodies is off: no body is stored anywhere.
    rows = await _rows(control_plane)
    assert len(rows) == compared
    assert all(r.primary_body is None and r.shadow_body is None for r in rows)


async def _at_least(server: TensorServer, count: int) -> bool:
    return len(server.request_ids) >= count


async def test_a_shadow_that_differs_30_percent_of_the_time(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    control_plane: ControlPlane,
    tensor_servers: Callable[..., Any],
) -> None:
    primary, shadow = await tensor_servers("v1"), await tensor_servers("v2", differ=True)
    await _setup(api, envoy, primary, shadow, percent=100, compare_percent=100)
    n = 100
    ids = await _send(envoy, [{} for _ in range(n)])
    how = [differs(i) for i in ids]
    summary = await _summary_with(api, n)

    disagreeing = sum(1 for h in how if h is not None)
    assert summary["agreement_rate"] == round(1 - disagreeing / n, 4)
    assert summary["status_agreement_rate"] == round(1 - how.count("status") / n, 4)
    # 503s carry another body: every differing answer differs in its body too.
    assert summary["body_agreement_rate"] == round(1 - disagreeing / n, 4)
    # The rate is near 0.30: the id hash makes each request differ with p = 0.3,
    # so over n = 100 the rate's standard deviation is sqrt(0.3 * 0.7 / 100) = 0.046;
    # 4 of them is 0.18.
    assert abs((1 - summary["agreement_rate"]) - 0.30) < 0.18, summary
    assert summary["max_abs_diff"] == 0.5
    assert summary["min_cosine"] < 1.0
    listed = summary["disagreements"]
    assert 0 < len(listed) <= 10
    for item in listed:
        assert item["request_id"] in ids
        expected = 503 if differs(item["request_id"]) == "status" else 200
        assert (item["primary_status"], item["shadow_status"]) == (200, expected)
        assert item["diff"], item
        # Without keep_bodies a diff names where, never what.
        assert "0.5" not in item["diff"] and "overloaded" not in item["diff"]
        assert item["primary_body"] is None and item["shadow_body"] is None


async def test_kept_bodies_are_capped(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    control_plane: ControlPlane,
    tensor_servers: Callable[..., Any],
) -> None:
    primary, shadow = await tensor_servers("v1"), await tensor_servers("v2")
    cap = 2048
    await _setup(
        api,
        envoy,
        primary,
        shadow,
        percent=100,
        compare_percent=100,
        keep_bodies=True,
        max_body_bytes=cap,
    )
    await _send(envoy, [{} for _ in range(5)] + [{"big": cap} for _ in range(5)])
    summary = await _summary_with(api, 10)
    # Answers over the cap are compared by status and latency only.
    assert summary["body_compared"] == 5
    assert summary["agreement_rate"] == 1.0
    rows = await _rows(control_plane)
    kept = [r for r in rows if r.primary_body is not None]
    assert len(kept) == 5
    for row in rows:
        for body in (row.primary_body, row.shadow_body):
            assert body is None or len(body) <= cap
    assert all(json.loads(r.primary_body or b"")["outputs"][0]["data"] == DATA for r in kept)


async def test_openai_embeddings_routed_by_body_are_compared(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    tensor_servers: Callable[..., Any],
) -> None:
    primary = await tensor_servers("v1", openai=True)
    shadow = await tensor_servers("v2", differ=True, openai=True)
    await _setup(api, envoy, primary, shadow, protocol="openai", percent=100, compare_percent=100)
    n = 30
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=10) as client:
        ids = []
        for _ in range(n):
            # No header, no path: the body's "model" picks the model's routes.
            response = await client.post("/v1/embeddings", json={"model": MODEL, "input": "hi"})
            assert response.status_code == 200, response.text
            assert response.json()["model"] == f"{MODEL}-v1"
            ids.append(response.headers["x-request-id"])
    how = [differs(i) for i in ids]
    summary = await _summary_with(api, n)
    assert summary["agreement_rate"] == round(1 - sum(h is not None for h in how) / n, 4)
    # Both answers are embeddings unless the shadow answered 503.
    assert summary["numeric_compared"] == n - how.count("status")
    assert summary["max_abs_diff"] == (0.5 if "numbers" in how else 0.0)
