"""The sync loop takes what this process's commits changed from the writer (a
handoff) instead of reading it back, and falls back to the tables whenever the
changes handed over do not follow on from what it holds; on SQLite and Postgres."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest

from controlplane.db.state import load_state
from controlplane.domain.audit import ActionContext
from controlplane.domain.clock import utcnow
from controlplane.domain.state import CommittedChange, DesiredState, ModelSpec
from controlplane.runtime import ControlPlane
from controlplane.services.changes import committed_changes
from controlplane.services.models import ModelService
from controlplane.settings import Settings
from tests.support import eventually

CONTEXT = ActionContext(actor="tests")


@pytest.fixture
async def plane(settings: Settings) -> AsyncIterator[ControlPlane]:
    """A control plane that is not started: its sync loop runs only when a test
    calls it (and checks every handoff against the tables: the tests' settings)."""
    plane = ControlPlane(settings)
    assert settings.sync_verify_handoff
    try:
        yield plane
    finally:
        # Stopped although never started: its gRPC server exists from the start, and
        # one never stopped keeps grpc's poller thread alive to the interpreter's exit.
        await plane.stop()


async def _create(plane: ControlPlane, name: str) -> list[CommittedChange]:
    """Create model ``name`` in a transaction of its own; what it committed."""
    async with plane.sessionmaker() as session:
        async with session.begin():
            await ModelService(session, CONTEXT).create_model(name, "http", None)
        return committed_changes(session)


async def _tables(plane: ControlPlane) -> DesiredState:
    async with plane.sessionmaker() as session:
        return await load_state(session)


def _reads(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (record.revision, record.read)  # type: ignore[attr-defined]
        for record in caplog.records
        if record.getMessage() == "xds.snapshot_published"
    ]


async def test_changes_handed_over_are_published_without_a_read(
    plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    sync = plane.sync
    await sync.sync_once()  # the first load reads the tables
    first = [await _create(plane, "a"), await _create(plane, "b")]
    caplog.set_level(logging.INFO, logger="controlplane.sync")
    # Handed over out of order, as two writers' commits may finish: still one chain.
    sync.offer(first[1])
    sync.offer(first[0])
    assert await sync.sync_once()
    assert sync.state == await _tables(plane)
    assert [m.name for m in sync.state.models] == ["a", "b"]
    assert _reads(caplog) == [(sync.state.revision, "handoff")]
    assert sync.handoff_mismatches == 0


async def test_a_gap_in_what_was_handed_over_reads_the_tables(
    plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    sync = plane.sync
    await sync.sync_once()
    await _create(plane, "a")  # committed elsewhere: never handed over
    later = await _create(plane, "b")
    caplog.set_level(logging.INFO, logger="controlplane.sync")
    sync.offer(later)
    assert await sync.sync_once()
    assert sync.state == await _tables(plane)
    assert _reads(caplog) == [(later[0].revision, "database")]


async def test_a_handoff_that_disagrees_with_the_tables_is_caught_and_the_tables_win(
    plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    sync = plane.sync
    await sync.sync_once()
    (change,) = await _create(plane, "a")
    wrong = dataclasses.replace(change, models={"a": ModelSpec("a", "openai")})
    caplog.set_level(logging.INFO, logger="controlplane.sync")
    sync.offer([wrong])
    assert await sync.sync_once()
    assert sync.handoff_mismatches == 1
    assert sync.state == await _tables(plane)
    assert sync.state.models[0].protocol == "http"
    mismatches = [r for r in caplog.records if r.getMessage() == "sync.handoff_mismatch"]
    assert [r.models for r in mismatches] == [["a"]]  # type: ignore[attr-defined]


async def test_a_rolled_back_transaction_hands_nothing_over(plane: ControlPlane) -> None:
    async with plane.sessionmaker() as session:
        transaction = await session.begin()
        await ModelService(session, CONTEXT).create_model("gone", "http", None)
        assert [c.revision for c in committed_changes(session)] == [1]
        await transaction.rollback()
        assert committed_changes(session) == []


async def test_an_api_commit_hands_its_changes_to_the_running_loop(
    api: httpx.AsyncClient, control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    offered: list[int] = []
    offer = control_plane.sync.offer

    def spy(changes: Sequence[CommittedChange]) -> None:
        offered.extend(change.revision for change in changes)
        offer(changes)

    monkeypatch.setattr(control_plane.sync, "offer", spy)
    response = await api.post("/v1/models", json={"name": "m", "protocol": "http"})
    assert response.status_code == 201, response.text
    revision = int(response.headers["x-turnout-revision"])

    async def published() -> bool:
        # Handed over once the answer is written, so perhaps just after it arrives.
        return offered == [revision] and control_plane.sync.revision == revision

    await eventually(published)
    assert control_plane.sync.state == await _tables(control_plane)
    # A dry run commits nothing, so it hands nothing over.
    dry = await api.post("/v1/models?dry_run=true", json={"name": "n", "protocol": "http"})
    assert dry.status_code == 200, dry.text
    again = await api.post("/v1/models", json={"name": "o", "protocol": "http"})
    assert again.status_code == 201, again.text
    later = int(again.headers["x-turnout-revision"])
    assert later == revision + 1  # the dry run made no revision

    async def both() -> bool:
        return offered == [revision, later]

    await eventually(both)


def test_a_change_applies_only_to_the_revision_before_it() -> None:
    change = CommittedChange(3, {"a": ModelSpec("a", "http")}, None, utcnow())
    assert change.apply(DesiredState(2)).models == (ModelSpec("a", "http"),)
    with pytest.raises(ValueError, match="revision 3 applies to revision 2, not 1"):
        change.apply(DesiredState(1))
