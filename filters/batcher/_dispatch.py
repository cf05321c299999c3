"""The queue and the work-conserving, deadline-aware dispatcher.

Rules, in the order the dispatch loop applies them:

1. A request that would not meet its deadline leaves with 503 (reason
   ``deadline``) as soon as that is known, instead of timing out later.
   On arrival it is refused when the running batches, the full batches
   queued ahead of it (earlier deadlines, ``max_batch_size`` rows each) and
   then the batch it will join are predicted to end after its deadline: the
   running and queued batches at the latency model's expected cost, its own
   batch with the model's margin, once for the whole chain. So under
   overload the excess is refused at once, and what is admitted is served
   in time. In the queue, a request is shed only when even alone in the next
   upstream slot its expected cost (no margin) misses its deadline: a
   refusal is final, while a call that runs a little long may still be in
   time (a margin here, counted again for the running batch, shed near
   capacity requests that a plain batcher serves within the SLO). The one
   exception: with the upstream idle, every ``PROBE_AFTER`` + 1-th request
   refused on arrival is sent as a probe, since the model learns only from
   calls it sends and would otherwise never recover from predicting more
   than the SLO.
2. Work conservation: while fewer than ``max_in_flight`` batches are upstream,
   the next batch is sent at once. The only hold: when a batch is already
   upstream and another slot is free, a batch smaller than ``max_batch_size``
   waits at most ``max_queue_delay_ms`` (measured from its oldest request's
   arrival) for company. With the upstream idle, nothing ever waits.
   Staging: when every slot is busy, one more batch is sent ``stage_ms``
   before the earliest running batch is expected to end, so that it waits at
   the model server (already received and parsed) instead of in the queue:
   the device starts it as soon as it is free, and the HTTP and JSON work of
   each call overlaps the previous call's compute instead of adding to it.
   The latency model learns a staged call's cost from the previous answer to
   its own. Nothing is staged before the model has measured a call.
3. A batch holds calls with one batch key, earliest deadline first, as many
   as fit in ``max_batch_size`` rows (a single larger call goes alone). It is
   never cut short to help its oldest call's deadline: that saves the per-row
   cost of the rows left out (a few milliseconds) but costs everyone behind
   them a whole call's fixed overhead, and near capacity it turns one slow
   call into a queue that only grows; rule 1 already sheds the calls that
   cannot make it.
4. If the upstream rejects a batch (400, 413, 422, 500) or answers something
   that cannot be split, the batch is split in halves and each half retried
   first, while deadlines allow; a single call gets the upstream's own answer.

Each request owns one future; results are delivered by position in the batch
and only to that future, so no request sees another's result.

Headers on every reply, for Envoy's access log and the batching figures:
``x-turnout-batch-size`` (the requests in the batch that served it) and
``x-turnout-queue-wait-us`` (microseconds from its arrival to its first upstream
send) on a reply that went upstream; ``x-turnout-shed: 1`` on a request refused
for load (``queue_full``, ``deadline``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import enum
import json
import logging
import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import Span, StatusCode, Tracer

from ._latency import LatencyModel
from ._metrics import BatcherMetrics
from ._policy import BatchingPolicy
from ._protocols import Call, Message, SplitError, merge_request, split_answer
from ._tracing import batch_span, inject_trace
from ._upstream import Upstream, UpstreamError

__all__ = [
    "BATCH_SIZE_HEADER",
    "QUEUE_WAIT_HEADER",
    "SHED_HEADER",
    "Dispatcher",
    "Pending",
    "Reply",
    "describe",
    "error_reply",
]

log = logging.getLogger("turnout.batcher.dispatch")

_SPLITTABLE = frozenset({400, 413, 422, 500})
# On every answer that went through a batch: how many requests it carried.
BATCH_SIZE_HEADER = "x-turnout-batch-size"

# Cutting a late upstream call at the deadline would not free the device (the
# server keeps computing) and would hide its true cost from the latency model,
# so calls may run this long past their latest deadline; callers that stopped
# waiting have left already.
UPSTREAM_GRACE_S = 10.0

# With the upstream idle, after this many refusals on the predicted cost the
# next such request is sent anyway, so that a latency model stuck above the SLO
# (after a stall) measures again (rule 1).
PROBE_AFTER = 8

BATCH_SIZE_HEADER = "x-turnout-batch-size"
QUEUE_WAIT_HEADER = "x-turnout-queue-wait-us"
SHED_HEADER = "x-turnout-shed"


@dataclass(frozen=True, slots=True)
class Reply:
    """What one caller receives."""

    status: int
    body: bytes
    headers: dict[str, str]


def error_reply(status: int, error: str, detail: str, **headers: str) -> Reply:
    """Return a JSON error reply ``{"error": ..., "detail": ...}``."""
    body = json.dumps({"error": error, "detail": detail}).encode()
    return Reply(status, body, {"Content-Type": "application/json", **headers})


class State(enum.Enum):
    """Where a pending request is."""

    QUEUED = "queued"
    RETRY = "retry"
    SENT = "sent"
    DONE = "done"


@dataclass(eq=False)
class Pending:
    """One request waiting for its reply: its call, target, timing and future."""

    call: Call
    target: str
    headers: dict[str, str]
    arrived: float
    deadline: float
    future: asyncio.Future[Reply]
    state: State = State.QUEUED
    # Seconds from arrival to the first upstream send; None until it is sent.
    queue_wait_s: float | None = field(default=None)
    span: Span | None = None  # the request's span, when the batcher traces

    def resolve(self, reply: Reply) -> None:
        """Deliver ``reply`` unless the caller is gone or already answered."""
        self.state = State.DONE
        if not self.future.done():
            self.future.set_result(reply)

    def served(self, status: int, body: bytes, headers: dict[str, str], size: int) -> None:
        """Deliver an answer that a batch of ``size`` requests got from upstream."""
        figures = {BATCH_SIZE_HEADER: str(size)}
        if self.queue_wait_s is not None:
            figures[QUEUE_WAIT_HEADER] = str(round(self.queue_wait_s * 1_000_000))
        self.resolve(Reply(status, body, {**headers, **figures}))


class Dispatcher:
    """Owns the queue of one upstream and sends its batches.

    ``submit`` returns an immediate rejection or ``None`` (the reply will
    arrive on the pending's future); ``withdraw`` removes a request whose
    client went away. Call ``start`` inside the loop and ``close`` at the end.
    """

    def __init__(
        self,
        upstream: Upstream,
        policy: BatchingPolicy,
        metrics: BatcherMetrics,
        *,
        max_in_flight: int = 1,
        stage_ms: float = 5.0,
        latency: LatencyModel | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.upstream = upstream
        self.policy = policy
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.stage_s = stage_ms / 1000.0
        self._last_answer = -math.inf  # when the latest upstream answer arrived
        self._refused_idle = 0  # refusals on predicted cost while idle, since the last probe
        self._staged_cost = 0.0  # the expected cost of the batch staged last
        self.latency = latency or LatencyModel()
        self.tracer = tracer
        self._groups: dict[Hashable, list[Pending]] = {}
        self._retries: deque[list[Pending]] = deque()
        self._depth = 0
        self._ends: list[float] = []  # predicted end times of in-flight batches
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches_sent = 0

    # --- public surface ------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests waiting (queued or awaiting a retry), not yet sent."""
        return self._depth

    @property
    def in_flight(self) -> int:
        """Batches sent upstream and not yet answered."""
        return len(self._ends)

    def start(self) -> None:
        """Start the dispatch loop on the running event loop."""
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def set_policy(self, policy: BatchingPolicy) -> None:
        """Apply a new policy to everything dispatched from now on."""
        self.policy = policy
        self._wake.set()

    def submit(self, pending: Pending) -> Reply | None:
        """Queue ``pending``; return a 429 or 503 reply instead when it cannot be served."""
        now = asyncio.get_running_loop().time()
        policy = self.policy
        if self._depth >= policy.max_queue:
            self.metrics.rejections.labels(reason="queue_full").inc()
            retry_after = max(1, math.ceil(self._drain_seconds()))
            return error_reply(
                429,
                "queue_full",
                "the batcher's queue is full",
                **{"Retry-After": str(retry_after), SHED_HEADER: "1"},
            )
        idle = not self._depth and not self._ends and self._loop_task is not None
        if self._admission_end(pending, now) > pending.deadline and not self._probe(idle):
            self.metrics.rejections.labels(reason="deadline").inc()
            return error_reply(
                503,
                "deadline",
                "the request cannot complete before its deadline",
                **{SHED_HEADER: "1"},
            )
        if idle:
            # Idle upstream, empty queue: send now, without a turn of the dispatch loop.
            self._launch([pending], now)
            return None
        group = self._groups.setdefault(pending.call.key, [])
        bisect.insort(group, pending, key=lambda p: p.deadline)
        self._depth += 1
        self.metrics.queue_depth.set(self._depth)
        self._wake.set()
        return None

    def withdraw(self, pending: Pending) -> None:
        """Remove ``pending`` from the queue if it has not been sent (its client left)."""
        if pending.state is State.QUEUED:
            group = self._groups.get(pending.call.key, [])
            if pending in group:
                group.remove(pending)
                if not group:
                    del self._groups[pending.call.key]
                self._left_queue(1)
        elif pending.state is State.RETRY:
            for half in self._retries:
                if pending in half:
                    half.remove(pending)
                    self._left_queue(1)
                    break
        else:
            return
        pending.state = State.DONE
        self.metrics.rejections.labels(reason="disconnected").inc()
        self._wake.set()

    async def close(self) -> None:
        """Stop dispatching; requests still waiting get 503."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        waiting = [p for group in self._groups.values() for p in group]
        waiting += [p for half in self._retries for p in half]
        for pending in waiting:
            pending.resolve(error_reply(503, "shutting_down", "the batcher is stopping"))
        self._groups.clear()
        self._retries.clear()

    # --- estimates -----------------------------------------------------------------------

    def _probe(self, idle: bool) -> bool:
        """Return whether a request refused on its predicted cost goes through as a probe.

        The model learns only from calls it sends: once it predicts more than
        the SLO for every call (after a stall), it would refuse everything and
        never learn otherwise. So with the upstream idle, after ``PROBE_AFTER``
        such refusals the next one is sent anyway; it delays no one.
        """
        if not idle:
            return False
        self._refused_idle += 1
        if self._refused_idle <= PROBE_AFTER:
            return False
        self._refused_idle = 0
        return True

    def _admission_end(self, pending: Pending, now: float) -> float:
        """Return when ``pending`` is predicted to end, behind the batches queued ahead of it.

        Requests ahead are counted, not their rows: with one row each (the
        common case) that is exact; with more it errs towards admitting.
        """
        ahead = 0
        for group in self._groups.values():
            ahead += bisect.bisect_right(group, pending.deadline, key=lambda p: p.deadline)
        latency = self.latency
        size = self.policy.max_batch_size
        batches, joined = divmod(ahead, size)
        queued = batches * latency.expected(size) / self.max_in_flight
        own = latency.predict(min(size, joined + pending.call.rows))
        return self._earliest_start(now) + queued + own

    def _earliest_start(self, now: float) -> float:
        """Return when a batch sent now would start: at once, or when a slot frees up."""
        if len(self._ends) < self.max_in_flight:
            return now
        start = max(now, sorted(self._ends)[len(self._ends) - self.max_in_flight])
        if len(self._ends) > self.max_in_flight:
            # A staged batch has not started while every slot is busy: whatever the
            # running ones' predicted ends (past, when they run long), it ends no
            # sooner than its own cost from now.
            start = max(start, now + self._staged_cost)
        return start

    def _drain_seconds(self) -> float:
        size = self.policy.max_batch_size
        batches = self._depth / size / self.max_in_flight
        return batches * max(self.latency.predict(size), 0.01)

    def _left_queue(self, count: int) -> None:
        self._depth -= count
        self.metrics.queue_depth.set(self._depth)

    # --- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            wake_at = self._expire(now)
            while self._depth:
                if len(self._ends) < self.max_in_flight:
                    hold_until = self._hold_until(now)
                else:
                    hold_until = self._stage_at()
                if hold_until > now:
                    wake_at = min(wake_at, hold_until)
                    break
                batch = self._next_batch(now)
                if not batch:
                    break
                self._launch(batch, now)
            timeout = None if wake_at == math.inf else max(0.0, wake_at - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _expire(self, now: float) -> float:
        """Reject requests that can no longer make their deadline; return when to look again."""
        start = self._earliest_start(now)
        wake_at = math.inf
        for key in list(self._groups):
            group = self._groups[key]
            while group:
                head = group[0]
                latest_start = head.deadline - self.latency.expected(head.call.rows)
                if start <= latest_start:
                    wake_at = min(wake_at, latest_start)
                    break
                group.pop(0)
                self._reject_deadline(head)
            if not group:
                del self._groups[key]
        for half in self._retries:
            for pending in [
                p for p in half if start + self.latency.expected(p.call.rows) > p.deadline
            ]:
                half.remove(pending)
                self._reject_deadline(pending)
        while self._retries and not self._retries[0]:
            self._retries.popleft()
        return wake_at

    def _reject_deadline(self, pending: Pending) -> None:
        self._left_queue(1)
        self.metrics.rejections.labels(reason="deadline").inc()
        pending.resolve(
            error_reply(
                503,
                "deadline",
                "the request can no longer meet its deadline",
                **{SHED_HEADER: "1"},
            )
        )

    def _stage_at(self) -> float:
        """Return when one more batch may be staged behind the running ones (inf: not now)."""
        if self.stage_s <= 0 or len(self._ends) > self.max_in_flight:
            return math.inf
        if not self.latency.observations:  # no idea yet when the running batch ends
            return math.inf
        return min(self._ends) - self.stage_s

    def _hold_until(self, now: float) -> float:
        """Return when the next batch may go: now, unless a partial batch may wait for company."""
        if self._retries or not self._ends:
            return now
        head = self._head_group()
        if head is None:
            return now
        rows = sum(p.call.rows for p in head)
        if rows >= self.policy.max_batch_size:
            return now
        oldest = min(p.arrived for p in head)
        return oldest + self.policy.max_queue_delay_ms / 1000.0

    def _head_group(self) -> list[Pending] | None:
        best: list[Pending] | None = None
        for group in self._groups.values():
            if group and (best is None or group[0].deadline < best[0].deadline):
                best = group
        return best

    def _next_batch(self, now: float) -> list[Pending]:
        while self._retries:
            half = self._retries.popleft()
            if half:
                self._left_queue(len(half))
                return half
        group = self._head_group()
        if group is None:
            return []
        batch = group[: self._batch_length(group)]
        del group[: len(batch)]
        if not group:
            del self._groups[batch[0].call.key]
        self._left_queue(len(batch))
        return batch

    def _batch_length(self, group: list[Pending]) -> int:
        """Return how many calls from the head of ``group`` fit in one batch (rule 3)."""
        limit = self.policy.max_batch_size
        rows = 0
        for length, pending in enumerate(group):
            rows += pending.call.rows
            if rows > limit:
                return max(1, length)
        return len(group)

    def _launch(self, batch: list[Pending], now: float) -> None:
        rows = sum(p.call.rows for p in batch)
        staged = len(self._ends) >= self.max_in_flight
        cost = self.latency.expected(rows)
        end = self._earliest_start(now) + cost
        if staged:
            self._staged_cost = cost
        self._ends.append(end)
        self.metrics.in_flight.set(len(self._ends))
        for pending in batch:
            pending.state = State.SENT
            if pending.queue_wait_s is None:
                pending.queue_wait_s = now - pending.arrived
                self.metrics.queue_wait.observe(pending.queue_wait_s)
        self.batches_sent += 1
        task = asyncio.get_running_loop().create_task(self._execute(batch, rows, end, staged))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- one upstream call ---------------------------------------------------------------

    async def _execute(
        self, batch: list[Pending], rows: int, end_marker: float, staged: bool
    ) -> None:
        if self.tracer is None:
            await self._call(batch, rows, end_marker, staged, None)
            return
        members = [p.span for p in batch if p.span is not None]
        span = batch_span(self.tracer, members, rows)
        try:
            await self._call(batch, rows, end_marker, staged, span)
        finally:
            span.end()

    async def _call(
        self, batch: list[Pending], rows: int, end_marker: float, staged: bool, span: Span | None
    ) -> None:
        """Send ``batch`` upstream as one call (traced by ``span``) and answer its requests."""
        loop = asyncio.get_running_loop()
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_rows.observe(rows)
        calls = [p.call for p in batch]
        started = loop.time()
        try:
            request = merge_request(calls)
            timeout = max(p.deadline for p in batch) - started + UPSTREAM_GRACE_S
            headers = {**batch[0].headers, **request.headers}
            if span is not None:
                inject_trace(headers, span)
            answer = await self.upstream.post_json(batch[0].target, request.body, headers, timeout)
        except UpstreamError as exc:
            self._finish(end_marker)
            if exc.timed_out:  # a lower bound on the cost, still worth learning from
                self.latency.observe(rows, loop.time() - started)
            status = 504 if exc.timed_out else 502
            if span is not None:
                span.set_status(StatusCode.ERROR, str(exc))
            log.warning("upstream call failed", extra={"rows": rows, "error": str(exc)})
            self._fail_all(batch, error_reply(status, "upstream_error", str(exc)))
            return
        except asyncio.CancelledError:
            self._finish(end_marker)
            for pending in batch:
                pending.resolve(error_reply(503, "shutting_down", "the batcher is stopping"))
            raise
        answered = loop.time()
        elapsed = answered - started
        # A staged call waited at the server for the one before it: its cost is
        # the time from that one's answer to its own.
        cost = answered - max(started, self._last_answer) if staged else elapsed
        self._last_answer = answered
        self._finish(end_marker)
        if span is not None:
            span.set_attribute("http.response.status_code", answer.status)
        self.metrics.upstream_time.observe(elapsed)
        if 200 <= answer.status < 300:
            self.latency.observe(rows, cost)
            self._deliver(batch, Message(answer.body, answer.framing()), answer.status)
        elif len(batch) > 1 and answer.status in _SPLITTABLE:
            self._split_and_retry(batch, f"upstream answered {answer.status}")
        else:
            if len(batch) > 1:
                self.metrics.rejections.labels(reason="upstream_error").inc(len(batch))
            for pending in batch:
                pending.served(answer.status, answer.body, answer.framing(), len(batch))

    def _finish(self, end_marker: float) -> None:
        self._ends.remove(end_marker)
        self.metrics.in_flight.set(len(self._ends))
        self._wake.set()

    def _deliver(self, batch: list[Pending], answer: Message, status: int) -> None:
        if len(batch) == 1:
            batch[0].served(status, answer.body, answer.headers, 1)
            return
        try:
            parts = split_answer(answer, [p.call for p in batch])
        except SplitError as exc:
            self._split_and_retry(batch, f"cannot split the answer: {exc}")
            return
        for pending, part in zip(batch, parts, strict=True):
            pending.served(status, part.body, part.headers, len(batch))

    def _split_and_retry(self, batch: list[Pending], reason: str) -> None:
        log.info("splitting rejected batch", extra={"requests": len(batch), "reason": reason})
        self.metrics.splits.inc()
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            for pending in half:
                pending.state = State.RETRY
            self._retries.append(half)
            self._depth += len(half)
        self.metrics.queue_depth.set(self._depth)
        self._wake.set()

    def _fail_all(self, batch: list[Pending], reply: Reply) -> None:
        self.metrics.rejections.labels(reason="upstream_error").inc(len(batch))
        for pending in batch:
            pending.served(reply.status, reply.body, reply.headers, len(batch))


def describe(policy: BatchingPolicy) -> dict[str, Any]:
    """Return ``policy`` as the JSON object the admin API uses."""
    return {
        "enabled": policy.enabled,
        "max_batch_size": policy.max_batch_size,
        "max_queue_delay_ms": policy.max_queue_delay_ms,
        "max_queue": policy.max_queue,
        "slo_ms": policy.slo_ms,
    }
