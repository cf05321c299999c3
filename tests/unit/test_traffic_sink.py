"""The stat sink holds at most two unfolded flushes per stream (the newest
raw, the earlier ones merged, counts exact), and one folder folds every
stream's flushes a flush at a time, letting the event loop run in between."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Callable

import pytest
from google.protobuf.message import DecodeError

from controlplane.telemetry import sink
from controlplane.telemetry.sink import Folder, Inbox, fold_stream
from controlplane.telemetry.window import Proxy, TrafficWindow
from controlplane.telemetry.wire import Flush, read
from tests.unit.test_traffic_wire import MODEL, Clock, _flush, _state


def _window(clock: Clock) -> TrafficWindow:
    state = _state()
    return TrafficWindow(lambda: state, retention_s=60, slot_s=5, clock=clock)


def test_merged_flushes_count_as_the_flushes_one_by_one() -> None:
    flushes = [
        _flush(v1_ok=10, v1_fail=2, active=3, samples=[4, 60, 60]),
        _flush(v1_ok=5, samples=[200]),
        _flush(v1_fail=1, active=7, samples=[2, 2]),
        _flush(v1_ok=1, active=5, samples=[9]),
    ]
    one_by_one = _window(Clock())
    for data in flushes:
        one_by_one.ingest_flush(Proxy(1, "a", ""), read(data))
    inbox = Inbox()
    # The first waits raw; the second reads it; the third and fourth merge.
    assert [inbox.put(data) for data in flushes] == [False, False, True, True]
    assert inbox.merged == 2
    merged = _window(Clock())
    inbox.fold_all(merged)
    assert inbox.take() == (None, None)
    (expected, _), (got, _) = (
        one_by_one.version_figures(MODEL, 60)["v1"],
        merged.version_figures(MODEL, 60)["v1"],
    )
    assert got.responses == expected.responses == {"200": 16, "500": 3}
    assert got.latency_samples == expected.latency_samples == 7
    assert got.latency_ms == expected.latency_ms
    # Gauges are the latest flush's.
    assert got.active_requests == expected.active_requests == 5
    [(_, totals, _)] = list(merged.totals())
    [(_, expected_totals, _)] = list(one_by_one.totals())
    assert totals.packed == expected_totals.packed and totals.sums == expected_totals.sums


async def test_stream_faster_than_the_folder_merges_and_loses_nothing() -> None:
    window = _window(Clock())
    folder = Folder(window)
    sent = 50

    async def messages() -> AsyncIterator[bytes]:
        # Every message is ready at once, as when the control plane is behind.
        for _ in range(sent):
            yield _flush(v1_ok=2, v1_fail=1, samples=[60])

    try:
        await fold_stream(folder, messages(), "test")
    finally:
        await folder.close()
    # Every flush was folded, or merged into one that was.
    assert window.merged_flushes + window.reports == sent
    v1, _ = window.version_figures(MODEL, 60)["v1"]
    assert v1.responses == {"200": 2 * sent, "500": sent}
    assert v1.latency_samples == sent


async def test_stream_error_ends_the_call_and_forgets_the_proxy() -> None:
    window = _window(Clock())
    folder = Folder(window)

    async def messages() -> AsyncIterator[bytes]:
        yield _flush(v1_ok=1, active=2)
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError):
        await fold_stream(folder, messages(), "test")
    await folder.close()
    figures = window.model_figures(MODEL, 60)
    assert (figures.requests, figures.active_requests) == (1, 0)


class _Recording(TrafficWindow):
    def __init__(self, events: list[str]) -> None:
        state = _state()
        super().__init__(lambda: state, retention_s=60, slot_s=5, clock=Clock())
        self.events = events

    def ingest_flush(self, proxy: Proxy, flush: Flush) -> None:
        self.events.append(f"fold {proxy.node_id}")
        super().ingest_flush(proxy, flush)


async def test_folder_folds_one_flush_at_a_time_and_lets_others_run_between() -> None:
    events: list[str] = []
    window = _Recording(events)
    folder = Folder(window)
    streams = []
    for name in ("a", "b", "c"):
        inbox = Inbox()
        inbox.proxy = Proxy(len(streams) + 1, name, "")
        inbox.put(_flush(v1_ok=1))
        streams.append(inbox)

    async def probe() -> None:
        while window.reports < 3:
            events.append("api")
            await asyncio.sleep(0)

    for inbox in streams:
        folder.schedule(inbox)
    folder.schedule(streams[0])  # already waiting its turn: not twice
    try:
        await probe()
        await asyncio.wait_for(_until(lambda: window.reports == 3), timeout=30)
    finally:
        await folder.close()
    folds = [e for e in events if e.startswith("fold")]
    assert folds == ["fold a", "fold b", "fold c"]
    # Between two folds, the other task ran: the folder never holds the loop for two.
    for first, second in itertools.pairwise(events):
        assert not (first.startswith("fold") and second.startswith("fold")), events


async def test_unreadable_message_ends_only_its_stream() -> None:
    window = _window(Clock())
    folder = Folder(window)
    bad: asyncio.Queue[bytes | None] = asyncio.Queue()

    good: asyncio.Queue[bytes | None] = asyncio.Queue()
    good_stream = asyncio.create_task(fold_stream(folder, _messages(good), "good"))
    bad_stream = asyncio.create_task(fold_stream(folder, _messages(bad), "bad"))
    # An identifier whose node runs past its end: not a message wire.read can read.
    await bad.put(b"\x0a\x03\x0a\x05x")
    await good.put(_flush(v1_ok=3))
    await asyncio.wait_for(_until(lambda: window.reports == 1), timeout=30)
    # The bad stream ends with the reader's error without waiting for another message.
    with pytest.raises(DecodeError):
        await asyncio.wait_for(bad_stream, timeout=30)
    await good.put(None)
    await asyncio.wait_for(good_stream, timeout=30)
    await folder.close()
    assert window.model_figures(MODEL, 60).requests == 3


async def _messages(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
    """A stream's messages, as they are put in ``queue``, until None."""
    while (data := await queue.get()) is not None:
        yield data


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - the condition is the window's own count
        await asyncio.sleep(0.001)


async def test_a_stream_that_is_behind_reads_only_in_its_turn() -> None:
    window = _window(Clock())
    folder = Folder(window)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    stream = asyncio.create_task(fold_stream(folder, _messages(queue), "s"))
    try:
        async with folder.turn:  # a fold in progress
            for n in (1, 2, 3):
                await queue.put(_flush(v1_ok=n))
            for _ in range(50):  # every task runs as far as it can
                await asyncio.sleep(0)
            # The first message waits raw; the stream holds the second until its
            # turn to read the first; the third is still in the queue.
            assert queue.qsize() == 1
            assert (window.reports, window.merged_flushes) == (0, 0)
        await queue.put(None)
        await asyncio.wait_for(stream, timeout=30)
    finally:
        await folder.close()
    assert window.model_figures(MODEL, 60).requests == 6


async def test_messages_are_read_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []

    def reading(data: bytes) -> Flush:
        threads.append(threading.get_ident())
        return read(data)

    monkeypatch.setattr(sink, "read", reading)
    window = _window(Clock())
    folder = Folder(window)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    stream = asyncio.create_task(fold_stream(folder, _messages(queue), "s"))
    try:
        await queue.put(_flush(v1_ok=2))
        await asyncio.wait_for(_until(lambda: window.reports == 1), timeout=30)
        async with folder.turn:  # behind: the next message makes the stream read this one
            await queue.put(_flush(v1_ok=3))
            await queue.put(_flush(v1_ok=4))
            await asyncio.wait_for(_until(lambda: queue.qsize() == 0), timeout=30)
        await asyncio.wait_for(_until(lambda: window.reports == 3), timeout=30)
        await queue.put(None)
        await asyncio.wait_for(stream, timeout=30)
    finally:
        await folder.close()
    assert window.model_figures(MODEL, 60).requests == 9
    assert len(threads) == 3
    assert threading.get_ident() not in threads
