"""Open-loop Poisson load: requests leave on a schedule, whether or not earlier ones finished.

Latency is measured from each request's scheduled send time, so a load
generator that falls behind shows up as latency instead of hiding it
(no coordinated omission).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

Check = Callable[[int, bytes], bool]


@dataclass
class Window:
    """The outcome of one load window at one offered rate."""

    target: str
    rate: float
    sent: int
    errors: int
    p50_ms: float
    p99_ms: float
    achieved_rps: float
    loadgen_cpu: float
    slo_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.sent if self.sent else 0.0

    @property
    def ok(self) -> bool:
        """p99 within the SLO and errors under 0.1%."""
        return self.p99_ms <= self.slo_ms and self.error_rate < 0.001

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": self.error_rate, "ok": self.ok}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; inf when empty."""
    if not values:
        return float("inf")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def open_loop(
    session: aiohttp.ClientSession,
    target: str,
    url: str,
    bodies: Callable[[int], tuple[bytes, Check]],
    rate: float,
    duration: float,
    slo_ms: float,
    seed: int,
    timeout_s: float = 3.0,
) -> tuple[Window, list[tuple[int, int, bool, float]]]:
    """Offer Poisson load at ``rate`` req/s for ``duration`` s; return the window and outcomes.

    Each outcome is ``(index, status, result_checked_ok, latency_ms)``; a
    timeout or connection error is status 0.
    """
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    latencies: list[float] = []
    outcomes: list[tuple[int, int, bool, float]] = []
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    headers = {"Content-Type": "application/json"}

    async def one(index: int, scheduled: float, body: bytes, check: Check) -> None:
        status, good = 0, False
        try:
            async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                payload = await resp.read()
                status = resp.status
                good = status == 200 and check(index, payload)
        except (aiohttp.ClientError, TimeoutError):
            pass
        latency = (loop.time() - scheduled) * 1000.0
        latencies.append(latency)
        outcomes.append((index, status, good, latency))

    tasks = []
    cpu0 = time.process_time()
    start = loop.time()
    scheduled = start
    index = 0
    while True:
        scheduled += rng.expovariate(rate)
        if scheduled - start > duration:
            break
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        body, check = bodies(index)
        tasks.append(asyncio.create_task(one(index, scheduled, body, check)))
        index += 1
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    cpu = time.process_time() - cpu0
    errors = sum(1 for _, _, good, _ in outcomes if not good)
    window = Window(
        target=target,
        rate=rate,
        sent=len(outcomes),
        errors=errors,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        achieved_rps=len(outcomes) / duration,
        loadgen_cpu=cpu / elapsed,
        slo_ms=slo_ms,
    )
    return window, outcomes
