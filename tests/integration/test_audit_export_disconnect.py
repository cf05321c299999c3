"""A client that hangs up part-way through /v1/audit/export costs the server no
warning and no error: the stream stops, its database session is released, and
the API keeps answering."""

from __future__ import annotations

import asyncio
import logging
import socket
import warnings

import httpx
import pytest

from controlplane.db.audit_repository import AuditRepository
from controlplane.domain.audit import ActionContext
from controlplane.runtime import ControlPlane
from tests.support import writing


async def _fill_audit_log(control_plane: ControlPlane, n: int) -> None:
    context = ActionContext(actor="tests", role="admin", status_code=422)
    async with writing(control_plane.sessionmaker) as session:
        audit = AuditRepository(session)
        for i in range(n):
            entry = context.entry(
                "traffic.update", "traffic", f"m{i}", after={"padding": "x" * 500}
            )
            await audit.append(entry)


def _read_part_then_hang_up(control_plane: ControlPlane, key: str) -> bytes:
    """Start an export, read part of it as fast as it comes, then close, as
    `curl ... | head` does. In a thread: the server must not wait for this client."""
    with socket.create_connection(("127.0.0.1", control_plane.api_port)) as sock:
        sock.sendall(
            b"GET /v1/audit/export?format=jsonl HTTP/1.1\r\nhost: x\r\n"
            + f"authorization: Bearer {key}\r\n\r\n".encode()
        )
        received = b""
        while len(received) < 200_000:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
async def test_hanging_up_during_an_export_logs_nothing_alarming(
    control_plane: ControlPlane,
    api: httpx.AsyncClient,
    admin_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _fill_audit_log(control_plane, 4000)
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            head = await asyncio.to_thread(_read_part_then_hang_up, control_plane, admin_key)
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            # A change goes through while (or after) that export stops.
            created = await api.post("/v1/models", json={"name": f"m{_}", "protocol": "http"})
            assert created.status_code == 201, created.text
        assert (await api.get("/v1/audit/verify")).json()["ok"] is True
        full = await api.get("/v1/audit/export")
        assert full.status_code == 200 and len(full.text.splitlines()) >= 4000
    alarming = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not alarming, [f"{r.name}: {r.getMessage()}" for r in alarming[:5]]
    assert not [str(w.message) for w in caught][:5]
