"""Batch-aware model servers for demos, tests and benchmarks.

``BatchModelServer`` speaks the three protocols the batcher batches and counts
calls and rows; a subclass supplies the model. ``SyntheticServer`` is a model
shaped like a GPU: a call with ``n`` rows takes ``T(n) = a + b*n`` (defaults
a = 20 ms, b = 0.5 ms) and at most ``concurrency`` calls (default 1) run at
once. Its outputs are a pure function of each input row, so a caller can check
that it got its own answer:

- KServe v2 ``POST /v2/models/{m}/infer``: for each input ``X`` an output
  ``X_out`` of the same shape: numbers ``2*x + 1``, strings upper-cased,
  booleans negated; the request ``id`` is echoed. Inputs and outputs may use
  the binary tensor data extension (``examples.v2_binary``); a request that
  lists ``outputs`` gets only those.
- OpenAI ``POST /v1/embeddings``: each input row gives
  ``[len, crc32 / 2**32, first code point, 1.0]``; usage counts words (or tokens).
- KServe v1 ``POST /v1/models/{m}:predict``: each instance mapped like v2 values.

A row holding the string ``"poison"`` or a number above 1e9 makes the whole
call fail with 400, as a real server fails a batch on one bad row.
``GET /stats`` reports calls, rows and requests; ``GET /healthz`` answers ok.
"""

from __future__ import annotations

import asyncio
import json
import math
import zlib
from collections import deque
from typing import Any

from aiohttp import web

from . import v2_binary

__all__ = ["BadInput", "BatchModelServer", "SyntheticServer", "synthetic_value"]


class BadInput(ValueError):
    """The call's input is invalid for the model; answered with 400."""


def _is_poison(value: Any) -> bool:
    if isinstance(value, list):
        return any(_is_poison(v) for v in value)
    if isinstance(value, dict):
        return any(_is_poison(v) for v in value.values())
    if isinstance(value, str):
        return value == "poison"
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 1e9


def synthetic_value(value: Any) -> Any:
    """Return the synthetic model's output for one input value (recursively for lists)."""
    if isinstance(value, list):
        return [synthetic_value(v) for v in value]
    if isinstance(value, dict):
        return {k: synthetic_value(v) for k, v in value.items()}
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return 2 * value + 1
    if isinstance(value, str):
        return value.upper()
    return value


def _embedding(row: Any) -> list[float]:
    text = row if isinstance(row, str) else json.dumps(row)
    first = float(ord(text[0])) if text else 0.0
    return [float(len(text)), zlib.crc32(text.encode()) / 2**32, first, 1.0]


class BatchModelServer:
    """Protocol handling and accounting shared by batch-aware example servers.

    Subclasses implement ``v2_outputs``, ``embed`` and ``predict``; each is
    called once per HTTP call, inside ``run_model`` (which enforces the
    concurrency cap and counts calls and rows).
    """

    def __init__(self, version: str = "v1", *, concurrency: int = 1) -> None:
        self.version = version
        self.concurrency = concurrency
        self.calls = 0
        self.rows = 0
        self.requests = 0
        self.rejected = 0
        self.active = 0
        self.call_rows: deque[int] = deque(maxlen=100_000)
        self.gate = asyncio.Event()
        self.gate.set()
        self._slots: asyncio.Semaphore | None = None

    def app(self) -> web.Application:
        """Return the aiohttp application serving this model."""
        application = web.Application(client_max_size=64 * 1024 * 1024)
        application.router.add_get("/healthz", self._healthz)
        application.router.add_get("/stats", self._stats)
        application.router.add_post("/v2/models/{name}/infer", self._v2)
        application.router.add_post("/v2/models/{name}/versions/{v}/infer", self._v2)
        application.router.add_post("/v1/embeddings", self._openai)
        application.router.add_post("/v1/models/{name}:predict", self._v1)
        return application

    def stats(self) -> dict[str, Any]:
        """Return counters: calls, rows, requests, rejected, active calls, max rows in one call."""
        return {
            "version": self.version,
            "calls": self.calls,
            "rows": self.rows,
            "requests": self.requests,
            "rejected": self.rejected,
            "active": self.active,
            "max_call_rows": max(self.call_rows, default=0),
        }

    async def run_model(self, rows: int, payload: Any, compute: Any) -> Any:
        """Run ``compute(payload)`` for a call of ``rows`` rows under the concurrency cap."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        self.active += 1
        try:
            await self.gate.wait()
            async with self._slots:
                if _is_poison(payload):
                    self.rejected += 1
                    raise BadInput("input out of range")
                self.calls += 1
                self.rows += rows
                self.call_rows.append(rows)
                return await self.execute(rows, payload, compute)
        finally:
            self.active -= 1

    async def execute(self, rows: int, payload: Any, compute: Any) -> Any:
        """Compute one call; subclasses add the model's cost (a sleep, a thread)."""
        return compute(payload)

    def v2_outputs(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Return v2 output tensors for validated v2 input tensors."""
        raise NotImplementedError

    def embed(self, rows: list[Any]) -> list[list[float]]:
        """Return one embedding per input row."""
        raise NotImplementedError

    def predict(self, instances: list[Any]) -> list[Any]:
        """Return one prediction per instance."""
        raise NotImplementedError

    def count_tokens(self, rows: list[Any]) -> int:
        """Return the usage (tokens) to report for ``rows``."""
        return sum(len(r.split()) if isinstance(r, str) else len(r) for r in rows)

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _read(self, request: web.Request) -> dict[str, Any]:
        self.requests += 1
        try:
            doc = await request.json()
        except ValueError as exc:
            raise BadInput("body is not JSON") from exc
        if not isinstance(doc, dict):
            raise BadInput("body must be an object")
        return doc

    async def _v2(self, request: web.Request) -> web.Response:
        try:
            self.requests += 1
            try:
                body = await request.read()
                doc = v2_binary.read_request(body, request.headers.get(v2_binary.HEADER))
            except ValueError as exc:
                raise BadInput(f"body is not a v2 request: {exc}") from exc
            inputs = doc.get("inputs")
            if not isinstance(inputs, list) or not inputs:
                raise BadInput("inputs must be a non-empty list")
            for tensor in inputs:
                _check_tensor(tensor)
            rows = int(inputs[0]["shape"][0]) if inputs[0]["shape"] else 1
            outputs = _requested(await self.run_model(rows, inputs, self.v2_outputs), doc)
        except BadInput as exc:
            return web.json_response({"error": str(exc)}, status=400)
        answer: dict[str, Any] = {
            "model_name": request.match_info["name"],
            "model_version": self.version,
            "outputs": outputs,
        }
        if "id" in doc:
            answer["id"] = doc["id"]
        payload, headers = v2_binary.write_answer(answer, doc)
        return web.Response(body=payload, headers=headers)

    async def _openai(self, request: web.Request) -> web.Response:
        try:
            doc = await self._read(request)
            raw = doc.get("input")
            is_tokens = isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)
            rows = [raw] if isinstance(raw, str) or is_tokens else raw
            if not isinstance(rows, list) or not rows:
                raise BadInput("input must be a string or a non-empty list")
            vectors = await self.run_model(len(rows), rows, self.embed)
        except BadInput as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        tokens = self.count_tokens(rows)
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": doc.get("model", self.version),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _v1(self, request: web.Request) -> web.Response:
        try:
            doc = await self._read(request)
            instances = doc.get("instances")
            if not isinstance(instances, list) or not instances:
                raise BadInput("instances must be a non-empty list")
            predictions = await self.run_model(len(instances), instances, self.predict)
        except BadInput as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"predictions": predictions})


def _requested(outputs: list[dict[str, Any]], doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the outputs ``doc`` asks for, in its order (all of them when it lists none)."""
    wanted = doc.get("outputs")
    if not wanted:
        return outputs
    by_name = {output["name"]: output for output in outputs}
    names = [item.get("name") if isinstance(item, dict) else None for item in wanted]
    missing = [name for name in names if name not in by_name]
    if missing:
        raise BadInput(f"unknown outputs {missing}")
    return [by_name[name] for name in names]


def _check_tensor(tensor: Any) -> None:
    if not isinstance(tensor, dict):
        raise BadInput("each input must be an object")
    shape, data = tensor.get("shape"), tensor.get("data")
    if not isinstance(shape, list) or not isinstance(data, list) or "name" not in tensor:
        raise BadInput("each input needs name, shape and data")
    flat: list[Any] = []
    _flatten(data, flat)
    if len(flat) != math.prod(shape):
        raise BadInput(f"input {tensor['name']!r} does not fill its shape")


def _flatten(data: Any, out: list[Any]) -> None:
    if isinstance(data, list):
        for element in data:
            _flatten(element, out)
    else:
        out.append(data)


class SyntheticServer(BatchModelServer):
    """A GPU-shaped model: ``n`` rows take ``a_ms + b_ms * n`` ms; ``concurrency`` calls at once."""

    def __init__(
        self,
        version: str = "v1",
        *,
        a_ms: float = 20.0,
        b_ms: float = 0.5,
        concurrency: int = 1,
    ) -> None:
        super().__init__(version, concurrency=concurrency)
        self.a_ms = a_ms
        self.b_ms = b_ms

    async def execute(self, rows: int, payload: Any, compute: Any) -> Any:
        """Sleep ``T(rows)`` (holding the slot, like a device), then compute."""
        await asyncio.sleep((self.a_ms + self.b_ms * rows) / 1000.0)
        return compute(payload)

    def v2_outputs(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Map every input ``X`` to ``X_out`` of the same shape, value by value."""
        outputs = []
        for tensor in inputs:
            datatype = tensor.get("datatype", "FP32")
            if datatype.startswith("INT") or datatype.startswith("UINT"):
                datatype = "INT64"
            outputs.append(
                {
                    "name": f"{tensor['name']}_out",
                    "shape": tensor["shape"],
                    "datatype": datatype,
                    "data": synthetic_value(tensor["data"]),
                }
            )
        return outputs

    def embed(self, rows: list[Any]) -> list[list[float]]:
        """Return ``[len, crc32 / 2**32, first code point, 1.0]`` per row."""
        return [_embedding(row) for row in rows]

    def predict(self, instances: list[Any]) -> list[Any]:
        """Map each instance value by value (numbers ``2x+1``, strings upper-cased)."""
        return [synthetic_value(instance) for instance in instances]
