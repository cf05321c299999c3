"""A fixed-timeout batcher, the baseline Turnout's batcher is measured against.

It is what most serving frameworks ship (a max batch size and a max wait):
a batch goes upstream when it holds ``max_batch`` rows or its first request
has waited ``wait_ms``, whatever the upstream is doing; no cap on batches in
flight, no deadlines. It reuses Turnout's protocol code so that only the
dispatch policy differs. Run: ``python -m bench.batching.fixed --upstream URL
--listen HOST:PORT --max-batch 16 --wait-ms 5``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Hashable

from aiohttp import web

from filters.batcher._protocols import Call, MalformedInput, merge_calls, parse_call, split_response
from filters.batcher._upstream import Upstream, UpstreamError

Item = tuple[Call, "asyncio.Future[tuple[int, bytes]]"]


class FixedBatcher:
    """Batches by size or timeout only."""

    def __init__(self, upstream: str, max_batch: int, wait_ms: float) -> None:
        self.upstream = Upstream(upstream)
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self.groups: dict[Hashable, list[Item]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def app(self) -> web.Application:
        application = web.Application()
        application.router.add_post("/{tail:.*}", self.handle)
        return application

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            call = parse_call("POST", request.path, request.query_string, request.headers, body)
        except MalformedInput as exc:
            return web.json_response({"error": "malformed_input", "detail": str(exc)}, status=400)
        if call is None:
            return web.json_response({"error": "not batchable"}, status=400)
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        group = self.groups.setdefault(call.key, [])
        group.append((call, future))
        if len(group) == 1:
            self._spawn(self._timer(call.key, group, request.path_qs))
        if sum(c.rows for c, _ in group) >= self.max_batch:
            self._flush(call.key, group, request.path_qs)
        status, payload = await future
        return web.Response(status=status, body=payload, content_type="application/json")

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _timer(self, key: Hashable, group: list[Item], target: str) -> None:
        await asyncio.sleep(self.wait_s)
        if self.groups.get(key) is group:
            self._flush(key, group, target)

    def _flush(self, key: Hashable, group: list[Item], target: str) -> None:
        del self.groups[key]
        self._spawn(self._send(group, target))

    async def _send(self, group: list[Item], target: str) -> None:
        calls = [c for c, _ in group]
        try:
            answer = await self.upstream.post_json(target, merge_calls(calls), {}, 30.0)
        except UpstreamError:
            for _, future in group:
                future.set_result((502, b'{"error": "upstream"}'))
            return
        if answer.status == 200 and len(group) > 1:
            parts = split_response(answer.body, calls)
            for (_, future), part in zip(group, parts, strict=True):
                future.set_result((200, part))
        else:
            for _, future in group:
                future.set_result((answer.status, answer.body))


async def _main(args: argparse.Namespace) -> None:
    batcher = FixedBatcher(args.upstream, args.max_batch, args.wait_ms)
    await batcher.upstream.start()
    runner = web.AppRunner(batcher.app(), access_log=None)
    await runner.setup()
    host, port = args.listen.rsplit(":", 1)
    await web.TCPSite(runner, host, int(port)).start()
    print(f"fixed batcher listening on {args.listen}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--max-batch", type=int, required=True)
    parser.add_argument("--wait-ms", type=float, required=True)
    asyncio.run(_main(parser.parse_args()))
