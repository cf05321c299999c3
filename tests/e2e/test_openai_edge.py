"""The inference edge as OpenAI clients see it: the real ``openai`` SDK against a real
Envoy (its base_url is Envoy's listener), configured by the control plane.

The model servers are test doubles that check the model name they serve, as
vLLM and TGI do, and stream Server-Sent Events like OpenAI's API.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from controlplane.db.revisions import RevisionRepository
from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from examples.model_server import bound_port
from tests.conftest import sqlite_copy
from tests.support import EnvoyProcess, eventually

pytestmark = pytest.mark.envoy

MODEL = "chat"
MiB = 1024 * 1024


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only: what these tests check lies between the SDK and Envoy."""
    return sqlite_copy(tmp_path, sqlite_template)


@pytest.fixture
async def envoy(
    control_plane: ControlPlane, settings: Settings, tmp_path: Path
) -> AsyncIterator[EnvoyProcess]:
    """One real Envoy over state-of-the-world ADS."""
    process = EnvoyProcess(
        node_id=f"test-{uuid.uuid4().hex[:6]}",
        xds_port=control_plane.xds_port,
        listener_port=settings.listener_port,
        workdir=tmp_path,
    )
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


@dataclass
class OpenAIServer:
    """An OpenAI-compatible model server that serves one model name (``served``):
    a request for another gets 404, as vLLM answers it. ``chunks`` SSE chunks,
    ``chunk_interval_s`` apart, answer a request with ``"stream": true``;
    ``hold`` (when given) stalls every answer until it is set."""

    __test__ = False

    version: str
    served: str
    chunks: int = 3
    chunk_interval_s: float = 0.0
    hold: asyncio.Event | None = None
    bodies: list[dict[str, Any]] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> OpenAIServer:
        application = web.Application(client_max_size=64 * MiB)
        application.router.add_post("/v1/chat/completions", self._chat)
        application.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(application, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = bound_port(self._runner)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def endpoint(self) -> dict[str, object]:
        return {"address": "127.0.0.1", "port": self.port}

    async def _read(self, request: web.Request) -> dict[str, Any] | web.Response:
        raw = await request.read()
        self.sizes.append(len(raw))
        body: dict[str, Any] = json.loads(raw)
        self.bodies.append(body)
        if body.get("model") != self.served:
            error = {
                "message": f"The model `{body.get('model')}` does not exist.",
                "type": "NotFoundError",
                "code": 404,
            }
            return web.json_response({"error": error}, status=404)
        if self.hold is not None:
            await self.hold.wait()
        return body

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        if not body.get("stream"):
            return web.json_response(_completion(self.served, self.version))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(self.chunks):
            if i and self.chunk_interval_s:
                await asyncio.sleep(self.chunk_interval_s)
            await response.write(f"data: {json.dumps(_chunk(self.served, i))}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
                "model": self.served,
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )


def _completion(model: str, version: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": version},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _chunk(model: str, index: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": str(index)}, "finish_reason": None}],
    }


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[OpenAIServer]]]:
    started: list[OpenAIServer] = []

    async def start(version: str, served: str = MODEL, **knobs: Any) -> OpenAIServer:
        server = await OpenAIServer(version, served, **knobs).start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.stop()


@pytest.fixture
async def sdk(envoy: EnvoyProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    """The OpenAI SDK pointed at Envoy; no retries, so each error is Envoy's first."""
    async with openai.AsyncOpenAI(
        base_url=f"{envoy.base_url}/v1", api_key="unused", max_retries=0, timeout=30
    ) as client:
        yield client


async def _ok(response: httpx.Response) -> None:
    assert response.status_code in (200, 201, 204), response.text


async def _register(
    api: httpx.AsyncClient,
    versions: dict[str, list[dict[str, object]]],
    weights: dict[str, int],
    name: str = MODEL,
) -> None:
    await _ok(await api.post("/v1/models", json={"name": name, "protocol": "openai"}))
    for version, endpoints in versions.items():
        body = {"version": version, "endpoints": endpoints}
        await _ok(await api.post(f"/v1/models/{name}/versions", json=body))
    if weights:
        await _ok(await api.put(f"/v1/models/{name}/traffic", json={"weights": weights}))


async def _applied(
    api: httpx.AsyncClient, control_plane: ControlPlane, envoy: EnvoyProcess
) -> None:
    """Wait until Envoy has ACKed every type of the latest revision."""
    async with control_plane.sessionmaker() as session:
        revision = await RevisionRepository(session).current()

    async def synced() -> bool:
        if (control_plane.sync.revision or 0) < revision:
            return False
        proxies = (await api.get("/v1/proxies")).json()
        mine = [p for p in proxies if p["node_id"] == envoy.node_id]
        return bool(mine) and all(t["status"] == "SYNCED" for t in mine[0]["types"].values())

    await eventually(synced, timeout=15)


def _chat(model: str, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def test_body_routing_takes_a_charset_no_content_type_and_large_bodies(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    control_plane: ControlPlane,
    servers: Callable[..., Awaitable[OpenAIServer]],
    sdk: openai.AsyncOpenAI,
) -> None:
    v1 = await servers("v1")
    await _register(api, {"v1": [v1.endpoint()]}, {"v1": 100})
    await _applied(api, control_plane, envoy)
    body = json.dumps(_chat(MODEL)).encode()
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=30) as client:
        # As .NET's JsonContent and OkHttp send it, and as a bare client sends it.
        for content_type in ("application/json; charset=utf-8", "Application/JSON;charset=UTF-8"):
            response = await client.post(
                "/v1/chat/completions", content=body, headers={"content-type": content_type}
            )
            assert response.status_code == 200, (content_type, response.text)
        bare = await client.post("/v1/chat/completions", content=body)
        assert "content-type" not in bare.request.headers
        assert bare.status_code == 200, bare.text

    # A long context: over the listener's 1 MiB buffer, under the 8 MiB limit.
    long = "x" * (3 * MiB)
    answer = await sdk.chat.completions.create(**_chat(MODEL, long))
    assert answer.choices[0].message.content == "v1"
    assert v1.sizes[-1] > 3 * MiB
    with pytest.raises(openai.APIStatusError) as too_large:
        await sdk.chat.completions.create(**_chat(MODEL, "x" * (9 * MiB)))
    assert too_large.value.status_code == 413
    assert too_large.value.code == "request_too_large"
    assert too_large.value.request_id


async def test_model_names_are_rewritten_to_the_served_name_and_listed(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    control_plane: ControlPlane,
    servers: Callable[..., Awaitable[OpenAIServer]],
    sdk: openai.AsyncOpenAI,
) -> None:
    v1 = await servers("v1")
    v2 = await servers("v2", served="org/Chat-2.0")
    await _register(api, {"v1": [v1.endpoint()], "v2": [v2.endpoint()]}, {"v1": 50, "v2": 50})
    policy = {"served_model_name": "org/Chat-2.0"}
    await _ok(await api.put(f"/v1/models/{MODEL}/versions/v2/policy", json=policy))
    await _applied(api, control_plane, envoy)

    pinned = await sdk.chat.completions.create(**_chat(f"{MODEL}:v2"))
    assert pinned.choices[0].message.content == "v2"
    assert v2.bodies[-1]["model"] == "org/Chat-2.0"
    pinned = await sdk.chat.completions.create(**_chat(f"{MODEL}:v1"))
    assert pinned.choices[0].message.content == "v1"
    assert v1.bodies[-1]["model"] == MODEL
    # The weighted split: each version gets its own name, whichever Envoy picks.
    answered = {
        (await sdk.chat.completions.create(**_chat(MODEL))).choices[0].message.content
        for _ in range(30)
    }
    assert answered == {"v1", "v2"}
    assert {b["model"] for b in v1.bodies} == {MODEL}
    assert {b["model"] for b in v2.bodies} == {"org/Chat-2.0"}
    # Only the top-level "model" changes; a quoted one inside the messages stays.
    quoted = '{"model": "chat:v2"}'
    await sdk.embeddings.create(model=f"{MODEL}:v2", input=quoted)
    assert (v2.bodies[-1]["model"], v2.bodies[-1]["input"]) == ("org/Chat-2.0", quoted)

    listed = [m.id async for m in sdk.models.list()]
    assert listed == [MODEL, f"{MODEL}:v1", f"{MODEL}:v2"]


async def test_models_list_per_tenant_and_auth_errors_in_the_openai_shape(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    control_plane: ControlPlane,
    servers: Callable[..., Awaitable[OpenAIServer]],
    sdk: openai.AsyncOpenAI,
) -> None:
    server = await servers("v1")
    await _register(api, {"v1": [server.endpoint()]}, {"v1": 100})
    secret = await servers("v1", served="secret")
    await _register(api, {"v1": [secret.endpoint()]}, {"v1": 100}, name="secret")
    rate = {"requests_per_second": 1000, "burst": 1000}
    await _ok(
        await api.post(
            "/v1/tenants", json={"name": "acme", "models": ["secret"], "rate_limit": rate}
        )
    )
    issued = await api.post("/v1/tenants/acme/credentials")
    await _ok(issued)
    token = issued.json()["token"]
    await _applied(api, control_plane, envoy)

    anonymous = [m.id async for m in sdk.models.list()]
    assert anonymous == [MODEL, f"{MODEL}:v1"]
    async with openai.AsyncOpenAI(
        base_url=f"{envoy.base_url}/v1", api_key=token, max_retries=0
    ) as acme:
        listed = [m.id async for m in acme.models.list()]
        assert listed == [MODEL, f"{MODEL}:v1", "secret", "secret:v1"]
        answer = await acme.chat.completions.create(**_chat("secret"))
        assert answer.choices[0].message.content == "v1"
    with pytest.raises(openai.AuthenticationError) as unauthenticated:
        await sdk.chat.completions.create(**_chat("secret"))
    assert unauthenticated.value.code == "unauthenticated"
    assert unauthenticated.value.request_id
    # A key that is no credential (SDKs insist on one) lists what anyone may use.
    async with openai.AsyncOpenAI(
        base_url=f"{envoy.base_url}/v1", api_key=token[:-8] + "AAAAAAAA", max_retries=0
    ) as forged:
        assert [m.id async for m in forged.models.list()] == anonymous


async def test_a_long_stream_outlives_the_request_timeout_and_a_silent_one_is_cut(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    control_plane: ControlPlane,
    servers: Callable[..., Awaitable[OpenAIServer]],
    sdk: openai.AsyncOpenAI,
) -> None:
    # One chunk every 0.1 s for 3 s: ten times the request timeout, always within
    # the idle bound (the defaults are 60 s and 60 s; lowered here to stay fast).
    steady = await servers("v1", chunks=31, chunk_interval_s=0.1)
    await _register(api, {"v1": [steady.endpoint()]}, {"v1": 100})
    timeouts = {"request_timeout_ms": 300, "stream_idle_timeout_ms": 2000}
    await _ok(await api.put(f"/v1/models/{MODEL}/policy", json={"timeouts": timeouts}))
    await _applied(api, control_plane, envoy)

    stream = await sdk.chat.completions.create(**_chat(MODEL), stream=True)
    chunks = [chunk.choices[0].delta.content async for chunk in stream]
    assert chunks == [str(i) for i in range(31)]
    # The same by header routing, asking for SSE.
    async with (
        httpx.AsyncClient(base_url=envoy.base_url, timeout=30) as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json=_chat(MODEL, stream=True),
            headers={"x-turnout-model": MODEL, "accept": "text/event-stream"},
        ) as response,
    ):
        events = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert response.status_code == 200
    assert len(events) == 32 and events[-1] == "data: [DONE]"

    # A request that is not a stream keeps the request timeout, as JSON.
    steady.hold = asyncio.Event()
    with pytest.raises(openai.InternalServerError) as timed_out:
        await sdk.chat.completions.create(**_chat(MODEL))
    assert timed_out.value.status_code == 504
    assert timed_out.value.code == "upstream_timeout"
    # A stream that stops sending is cut after the idle bound.
    with pytest.raises(openai.APIStatusError) as idle:
        stream = await sdk.chat.completions.create(**_chat(MODEL), stream=True)
    assert idle.value.code == "stream_idle_timeout"
    steady.hold.set()


async def test_every_reply_envoy_makes_is_json_with_the_request_id(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    control_plane: ControlPlane,
    servers: Callable[..., Awaitable[OpenAIServer]],
    sdk: openai.AsyncOpenAI,
) -> None:
    hold = asyncio.Event()
    busy = await servers("v1", hold=hold)
    gone = await servers("gone")
    await gone.stop()
    await _register(
        api,
        {"v1": [busy.endpoint()], "gone": [gone.endpoint()], "empty": []},
        {"v1": 100},
    )
    breakers = {"max_connections": 1, "max_pending_requests": 1, "max_requests": 1}
    await _ok(
        await api.put(f"/v1/models/{MODEL}/versions/v1/policy", json={"circuit_breakers": breakers})
    )
    await _applied(api, control_plane, envoy)

    async def status_error(model: str) -> openai.APIStatusError:
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(**_chat(model))
        assert caught.value.request_id, caught.value.response.text
        return caught.value

    unknown = await status_error("nope")
    assert isinstance(unknown, openai.NotFoundError)
    assert (unknown.code, unknown.type) == ("model_not_found", "invalid_request_error")
    assert (await status_error(f"{MODEL}:v9")).code == "version_not_found"
    refused = await status_error(f"{MODEL}:gone")
    assert isinstance(refused, openai.InternalServerError)
    assert (refused.status_code, refused.code) == (503, "upstream_unavailable")
    assert (await status_error(f"{MODEL}:empty")).code == "no_healthy_upstream"

    # Overflow: one request is held at the server, one may queue, the rest overflow.
    pending = [asyncio.create_task(status_error(MODEL)) for _ in range(6)]
    await eventually(lambda: _true(len(busy.bodies) >= 1), timeout=10)
    overflowed = await eventually(lambda: _done(pending, 4), timeout=10)
    hold.set()
    await asyncio.gather(*pending, return_exceptions=True)
    assert {e.code for e in overflowed} == {"overloaded"}

    # The plain shape elsewhere, with Envoy's own words as the reason.
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=30) as client:
        response = await client.post(f"/models/{MODEL}/predict", headers={VERSION: "gone"})
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == "upstream_unavailable"
    assert body["request_id"] == response.headers["x-request-id"]
    assert "connect" in body["reason"]


VERSION = "x-turnout-version"


async def _true(value: bool) -> bool:
    return value


async def _done(
    tasks: list[asyncio.Task[openai.APIStatusError]], count: int
) -> list[openai.APIStatusError]:
    done = [t for t in tasks if t.done()]
    return [t.result() for t in done] if len(done) >= count else []
