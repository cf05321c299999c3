"""The send budget shared by every ADS stream (controlplane.xds.wire)."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.xds.wire import SendBudget

TIMEOUT_S = 5.0


async def test_a_response_waits_until_the_bytes_in_flight_leave_room() -> None:
    budget = SendBudget(100)
    await budget.acquire(60)
    waiting = asyncio.create_task(budget.acquire(60))
    await asyncio.sleep(0)
    assert not waiting.done()
    budget.release(60)
    await asyncio.wait_for(waiting, TIMEOUT_S)
    assert budget.in_flight == 60


async def test_a_response_larger_than_the_budget_goes_out_alone() -> None:
    budget = SendBudget(100)
    await asyncio.wait_for(budget.acquire(500), TIMEOUT_S)
    assert budget.in_flight == 500
    waiting = asyncio.create_task(budget.acquire(1))
    await asyncio.sleep(0)
    assert not waiting.done()
    budget.release(500)
    await asyncio.wait_for(waiting, TIMEOUT_S)


async def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    budget = SendBudget(100)
    await budget.acquire(100)
    first = asyncio.create_task(budget.acquire(50))
    second = asyncio.create_task(budget.acquire(50))
    await asyncio.sleep(0)
    budget.release(100)  # wakes the first, which is cancelled before it runs
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, TIMEOUT_S)
    assert budget.in_flight == 50


async def test_waiters_are_served_in_order_as_room_appears() -> None:
    budget = SendBudget(100)
    await budget.acquire(100)
    order: list[int] = []

    async def take(i: int) -> None:
        await budget.acquire(40)
        order.append(i)

    tasks = [asyncio.create_task(take(i)) for i in range(3)]
    await asyncio.sleep(0)
    budget.release(100)
    await asyncio.wait_for(asyncio.gather(tasks[0], tasks[1]), TIMEOUT_S)
    assert order == [0, 1] and not tasks[2].done()
    budget.release(40)
    await asyncio.wait_for(tasks[2], TIMEOUT_S)
    assert order == [0, 1, 2]


async def test_a_holder_that_never_releases_stalls_others_only_for_their_patience() -> None:
    budget = SendBudget(100)
    await budget.acquire(100)  # a proxy that stopped reading: never released
    await asyncio.wait_for(budget.take(50, patience_s=0.05), TIMEOUT_S)
    assert budget.in_flight == 150
    budget.release(50)
    budget.release(100)
    assert budget.in_flight == 0
    await asyncio.wait_for(budget.take(60, patience_s=0.05), TIMEOUT_S)
    assert budget.in_flight == 60


async def test_a_response_waits_its_turn_while_bytes_keep_leaving() -> None:
    """A reconnect storm: the budget is full but keeps making progress, so a response
    queued behind many others waits longer than its patience instead of going ahead
    and putting every waiting response in gRPC's buffers at once."""
    budget = SendBudget(100)
    patience_s = 0.5
    await budget.acquire(100)
    chain = [asyncio.create_task(budget.take(100, patience_s)) for _ in range(20)]
    last = asyncio.create_task(budget.take(50, patience_s))
    await asyncio.sleep(0)  # every taker queued, in order
    peak = budget.in_flight
    for taker in chain:  # each full response leaves after 50 ms: 1 s in all
        await asyncio.sleep(0.05)
        budget.release(100)
        await asyncio.wait_for(taker, TIMEOUT_S)
        peak = max(peak, budget.in_flight)
        assert not last.done()
    await asyncio.sleep(0.05)
    budget.release(100)
    await asyncio.wait_for(last, TIMEOUT_S)
    assert peak == 100 and budget.in_flight == 50


async def test_an_idle_spell_is_not_taken_for_a_stall() -> None:
    budget = SendBudget(100)
    await budget.acquire(100)
    # Nothing was released for a long while before this response began to wait.
    budget._progress_at -= 60.0
    waiting = asyncio.create_task(budget.take(50, patience_s=0.5))
    done, _ = await asyncio.wait({waiting}, timeout=0.1)
    assert not done and budget.in_flight == 100
    budget.release(100)
    await asyncio.wait_for(waiting, TIMEOUT_S)
    assert budget.in_flight == 50
