"""The fleet benchmark's raw HTTP/2 ADS client syncs against the real ADS server as
its grpcio client does."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest

from bench.xds.adsclient import AdsClient, AdsState
from bench.xds.adsh2 import H2AdsClient
from bench.xds.common import free_port, generate_state
from controlplane.domain.state import DesiredState
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from controlplane.xds.server import XdsServer
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.status import ProxyRegistry, SyncStatus
from controlplane.xds.translate import translate

TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
TIMEOUT_S = 20.0


def _snapshot(state: DesiredState) -> Snapshot:
    return Snapshot.from_resources(state.revision, translate(state))


async def _current(clients: list[AdsState], snapshot: Snapshot) -> None:
    versions = {t: snapshot.version(t) for t in TYPES}

    async def poll() -> None:
        while True:
            if all(c.current(versions) for c in clients):
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), TIMEOUT_S)


def _seen(client: AdsState) -> dict[str, tuple[str, frozenset[str], int, int, int]]:
    return {
        t: (
            r.version,
            frozenset(r.names),
            r.resources,
            r.last_bytes,
            len(r.last_names),
        )
        for t, r in client.received.items()
    }


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_h2_client_syncs_and_follows_a_change_as_the_grpc_client_does(delta: bool) -> None:
    cache, registry = SnapshotCache(), ProxyRegistry()
    state = generate_state(12, 3, 4)
    first = _snapshot(state)
    await cache.publish(first)
    server = XdsServer(cache, registry)
    port = await server.start("127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    reference = AdsClient(channel, "grpc-0", delta=delta)
    h2_clients = [H2AdsClient("127.0.0.1", port, f"h2-{i}", delta=delta) for i in range(3)]
    clients: list[AdsState] = [reference, *h2_clients]
    try:
        reference.start()
        for client in h2_clients:
            client.start()
        await _current(clients, first)
        assert all(c.synced() for c in clients)
        for client in h2_clients:
            assert _seen(client) == _seen(reference)
            assert client.received[ENDPOINT].resources >= 12 * 3

        # A traffic split on one model: new routes; every stream follows and ACKs.
        model = state.models[3]
        changed = DesiredState(
            state.revision + 1,
            (
                *state.models[:3],
                dataclasses.replace(model, weights=(("v1", 30), ("v2", 70))),
                *state.models[4:],
            ),
        )
        second = _snapshot(changed)
        assert second.version(ROUTE) != first.version(ROUTE)
        await cache.publish(second)
        await _current(clients, second)
        for client in h2_clients:
            assert _seen(client) == _seen(reference)

        # The server saw every h2 stream ACK the new versions.
        async def acked() -> None:
            while True:
                found = [registry.find(client.node_id) for client in h2_clients]
                if all(
                    c is not None and registry.overall(c, second) == SyncStatus.SYNCED
                    for c in found
                ):
                    return
                await asyncio.sleep(0.01)

        await asyncio.wait_for(acked(), TIMEOUT_S)

        # The control plane goes away: every stream ends; a restart syncs from scratch.
        await server.stop(grace=0)
        await asyncio.wait_for(_until_ended(h2_clients), TIMEOUT_S)
        server = XdsServer(cache, registry)
        await server.start("127.0.0.1", port)
        for client in h2_clients:
            client.restart()
        await _current(h2_clients, second)  # type: ignore[arg-type]
        assert all(c.synced() for c in h2_clients)
    finally:
        await reference.stop()
        for client in h2_clients:
            await client.stop()
        await channel.close()
        await server.stop(grace=0)


async def _until_ended(clients: list[H2AdsClient]) -> None:
    while True:
        if all(c.ended for c in clients):
            return
        await asyncio.sleep(0.01)


async def test_h2_client_retries_a_stream_that_gets_no_response_as_envoy_does() -> None:
    cache, registry = SnapshotCache(), ProxyRegistry()
    snapshot = _snapshot(generate_state(2, 2, 2))
    await cache.publish(snapshot)
    port = free_port()
    client = H2AdsClient("127.0.0.1", port, "early", delta=False)
    client.start()  # nothing listens yet: refused, then retried with a backoff
    server = XdsServer(cache, registry)
    try:
        await asyncio.wait_for(_until_refused(client), TIMEOUT_S)
        assert not client.ended
        await server.start("127.0.0.1", port)
        await _current([client], snapshot)
        assert client.synced()
    finally:
        await client.stop()
        await server.stop(grace=0)


async def _until_refused(client: H2AdsClient) -> None:
    while True:
        if client.rejected:
            return
        await asyncio.sleep(0.01)
