"""Property: whatever the interleaving, every request gets exactly its own result."""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import aiohttp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from filters.batcher import BatcherConfig, BatchingPolicy, start_batcher

from .conftest import start_upstream, v2_body, wait_until

KINDS = ("v2", "v2", "openai", "v1", "malformed", "poison", "v2bin", "v2bin", "bin_malformed")
HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Req:
    kind: str
    rows: int
    yields: int  # event-loop turns to wait before sending: the interleaving


@dataclass(frozen=True)
class Scenario:
    max_batch_size: int
    max_in_flight: int
    hold_until: int  # requests sent while the upstream's gate is closed
    requests: tuple[Req, ...]


scenarios = st.builds(
    Scenario,
    max_batch_size=st.sampled_from([1, 2, 3, 5, 32]),
    max_in_flight=st.sampled_from([1, 2]),
    hold_until=st.integers(min_value=0, max_value=12),
    requests=st.lists(
        st.builds(
            Req,
            kind=st.sampled_from(KINDS),
            rows=st.integers(min_value=1, max_value=3),
            yields=st.integers(min_value=0, max_value=4),
        ),
        min_size=1,
        max_size=16,
    ).map(tuple),
)


def request_for(i: int, req: Req) -> tuple[str, dict[str, Any]]:
    """Return the path and body of request ``i``; its values are unique to it."""
    if req.kind in ("v2", "malformed", "v2bin", "bin_malformed"):
        doc = v2_body(f"req-{i}", [[float(i * 100 + r), float(-i)] for r in range(req.rows)])
        if req.kind == "malformed":
            doc["inputs"][0]["data"].append(1.0)
        return "/v2/models/m/infer", doc
    if req.kind in ("openai", "poison"):
        texts = [f"req-{i}-row-{r}" for r in range(req.rows)]
        if req.kind == "poison":
            texts[-1] = "poison"
        return "/v1/embeddings", {"model": "e", "input": texts}
    return "/v1/models/m:predict", {"instances": [[i, r] for r in range(req.rows)]}


def wire(i: int, req: Req, doc: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Return the body and headers that send ``doc``: binary tensors for the v2bin kinds.

    A binary caller asks for its output as binary data or as JSON, by the parity of ``i``.
    """
    if req.kind not in ("v2bin", "bin_malformed"):
        return json.dumps(doc).encode(), {"Content-Type": "application/json"}
    tensor = dict(doc["inputs"][0])
    values = tensor.pop("data")
    raw = struct.pack(f"<{len(values)}f", *values)
    size = len(raw) + (4 if req.kind == "bin_malformed" else 0)  # announces a missing value
    tensor["parameters"] = {"binary_data_size": size}
    header = {
        "id": doc["id"],
        "inputs": [tensor],
        "outputs": [{"name": "x_out", "parameters": {"binary_data": i % 2 == 0}}],
    }
    body = json.dumps(header).encode()
    return body + raw, {"Content-Type": "application/octet-stream", HEADER: str(len(body))}


def read(body: bytes, headers: Any) -> dict[str, Any]:
    """Return the answer's JSON with any binary output decoded into ``data`` (as FP32)."""
    if HEADER not in headers:
        return dict(json.loads(body))
    length = int(headers[HEADER])
    answer = dict(json.loads(body[:length]))
    offset = length
    for output in answer.get("outputs", []):
        size = output.pop("parameters")["binary_data_size"]
        output["data"] = list(struct.unpack(f"<{size // 4}f", body[offset : offset + size]))
        output["binary"] = True
        offset += size
    assert offset == len(body)
    return answer


def check(i: int, req: Req, doc: dict[str, Any], status: int, answer: dict[str, Any]) -> None:
    if req.kind in ("malformed", "poison", "bin_malformed"):
        assert status == 400, (i, req, status, answer)
        return
    assert status == 200, (i, req, status, answer)
    if req.kind in ("v2", "v2bin"):
        assert answer["id"] == f"req-{i}"
        (output,) = answer["outputs"]
        assert output.get("binary", False) == (req.kind == "v2bin" and i % 2 == 0)
        assert output["shape"] == [req.rows, 2]
        assert output["data"] == [2 * v + 1 for v in doc["inputs"][0]["data"]]
    elif req.kind == "openai":
        texts = doc["input"]
        assert [d["index"] for d in answer["data"]] == list(range(req.rows))
        for text, item in zip(texts, answer["data"], strict=True):
            assert item["embedding"][:2] == [float(len(text)), zlib.crc32(text.encode()) / 2**32]
    else:
        assert answer["predictions"] == [[2 * i + 1, 2 * r + 1] for r in range(req.rows)]


async def run_scenario(scenario: Scenario) -> None:
    upstream = await start_upstream(a_ms=0.5, b_ms=0.05)
    policy = BatchingPolicy(
        max_batch_size=scenario.max_batch_size, max_queue_delay_ms=1, slo_ms=60_000
    )
    batcher = await start_batcher(
        BatcherConfig(
            upstream=upstream.url,
            host="127.0.0.1",
            port=0,
            policy=policy,
            max_in_flight=scenario.max_in_flight,
        )
    )
    if scenario.hold_until:
        upstream.model.gate.clear()
    try:
        async with aiohttp.ClientSession() as client:

            async def send(i: int, req: Req) -> None:
                path, doc = request_for(i, req)
                for _ in range(req.yields):
                    await asyncio.sleep(0)
                body, headers = wire(i, req, doc)
                async with client.post(batcher.url + path, data=body, headers=headers) as response:
                    answer = read(await response.read(), response.headers)
                    check(i, req, doc, response.status, answer)

            def arrived() -> int:
                metrics = batcher.metrics
                batched = metrics.requests.labels(mode="batched")._value.get()
                return int(batched + metrics.rejections.labels(reason="malformed")._value.get())

            tasks = []
            for i, req in enumerate(scenario.requests):
                if i == scenario.hold_until:
                    # Everything sent so far is queued behind the closed gate.
                    await wait_until(lambda: arrived() >= scenario.hold_until)
                    upstream.model.gate.set()
                tasks.append(asyncio.create_task(send(i, req)))
            upstream.model.gate.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
            event(f"upstream calls < requests: {upstream.model.calls < len(tasks)}")
    finally:
        upstream.model.gate.set()
        await batcher.close()
        await upstream.runner.cleanup()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios)
def test_every_request_gets_its_own_result(scenario: Scenario) -> None:
    asyncio.run(run_scenario(scenario))
