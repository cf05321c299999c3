"""The in-process reference: a batcher written by hand inside the model server.

It is what a team would write instead of deploying Turnout: one process, the
synthetic model (or MiniLM) and a simple work-conserving loop in front of it:
take the first queued request, gather more until the batch holds
``max_batch`` rows or ``wait_ms`` have passed since that first one, run the
model on the batch (one batch at a time, like one device), answer everyone,
repeat. No deadlines, no shedding, no second HTTP hop. Turnout's goodput is
stated as a ratio to this one, measured in the same run.

Run: ``python -m bench.batching.inprocess --mode synthetic --port 9300
[--max-batch 32] [--wait-ms 10]`` (``--mode minilm`` needs the ``[models]``
extra). It serves v2 infer (synthetic) and OpenAI embeddings (both), plus
``GET /stats`` (``active``: requests queued or running).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web

from examples.synthetic import BatchModelServer, SyntheticServer

Item = tuple[str, Any, "asyncio.Future[Any]"]


class InProcessBatcher:
    """A queue and one loop in front of ``model`` (one batch at a time)."""

    def __init__(self, model: BatchModelServer, max_batch: int, wait_ms: float) -> None:
        self.model = model
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.active = 0
        self.batches = 0
        self._task: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        application = web.Application()
        application.router.add_get("/stats", self._stats)
        application.router.add_post("/v2/models/{name}/infer", self._v2)
        application.router.add_post("/v1/embeddings", self._embeddings)
        application.on_startup.append(self._start)
        return application

    async def _start(self, _app: web.Application) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response({"active": self.active, "batches": self.batches})

    async def _submit(self, kind: str, row: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.active += 1
        try:
            self.queue.put_nowait((kind, row, future))
            return await future
        finally:
            self.active -= 1

    async def _v2(self, request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        tensor = doc["inputs"][0]
        out = await self._submit("v2", tensor)
        answer = {"model_name": request.match_info["name"], "outputs": [out]}
        if "id" in doc:
            answer["id"] = doc["id"]
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json")

    async def _embeddings(self, request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        raw = doc.get("input")
        rows = [raw] if isinstance(raw, str) else raw
        if not isinstance(rows, list) or len(rows) != 1:
            return web.json_response({"error": "one input per request"}, status=400)
        vector = await self._submit("embed", rows[0])
        data = [{"object": "embedding", "index": 0, "embedding": vector}]
        return web.json_response({"object": "list", "data": data, "model": doc.get("model")})

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            until = loop.time() + self.wait_s
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = until - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            await self._run(batch)

    async def _run(self, batch: list[Item]) -> None:
        self.batches += 1
        for kind in ("v2", "embed"):
            items = [item for item in batch if item[0] == kind]
            if not items:
                continue
            try:
                outputs = await self._compute(kind, [row for _, row, _ in items])
            except Exception as exc:  # a failed batch fails its callers, not the loop
                for _, _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), output in zip(items, outputs, strict=True):
                if not future.done():
                    future.set_result(output)

    async def _compute(self, kind: str, rows: list[Any]) -> list[Any]:
        model = self.model
        if kind == "embed":
            return list(await model.run_model(len(rows), rows, model.embed))
        # v2: stack the [1, k] tensors into one [n, k] tensor, run, and cut it again.
        first = rows[0]
        stacked = {**first, "shape": [len(rows), *first["shape"][1:]]}
        stacked["data"] = [value for row in rows for value in _flat(row["data"])]
        (output,) = await model.run_model(len(rows), [stacked], model.v2_outputs)
        width = len(output["data"]) // len(rows)
        return [
            {
                **output,
                "shape": rows[i]["shape"],
                "data": output["data"][i * width : (i + 1) * width],
            }
            for i in range(len(rows))
        ]


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [value for element in data for value in _flat(element)]
    return [data]


def build_model(mode: str, threads: int | None) -> BatchModelServer:
    """Return the model the reference serves: the synthetic one or MiniLM."""
    if mode == "minilm":
        from examples.minilm import MiniLMServer

        return MiniLMServer("bench", threads=threads)
    return SyntheticServer("bench")


async def _main(args: argparse.Namespace) -> None:
    batcher = InProcessBatcher(build_model(args.mode, args.threads), args.max_batch, args.wait_ms)
    runner = web.AppRunner(batcher.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    print(f"in-process batcher ({args.mode}) listening on {args.host}:{args.port}", flush=True)
    started = time.monotonic()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()
    print(f"stopped after {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("synthetic", "minilm"), default="synthetic")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--wait-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None)
    asyncio.run(_main(parser.parse_args()))
