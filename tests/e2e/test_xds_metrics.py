"""A real Envoy moves the xDS series on GET /metrics: pushes by type and variant, the
proxies by status and their lag, and a change's commit-to-push time. Once over
state-of-the-world ADS and once over delta."""

from __future__ import annotations

import httpx
import pytest

from tests.support import EnvoyProcess, applied, sample, scrape, synced_at

pytestmark = pytest.mark.envoy

PUSHES = "turnout_xds_pushes_total"
COMMIT_TO_PUSH = "turnout_xds_commit_to_push_seconds_count"


async def test_pushes_proxies_lag_and_commit_to_push_follow_a_real_envoy(
    api: httpx.AsyncClient, anonymous_api: httpx.AsyncClient, envoy: EnvoyProcess
) -> None:
    await api.post("/v1/models", json={"name": "m", "protocol": "http"})
    first = await api.post(
        "/v1/models/m/versions",
        json={"version": "v1", "endpoints": [{"address": "127.0.0.1", "port": 9001}]},
    )
    assert first.status_code == 201, first.text
    proxy = await applied(api, envoy.node_id)
    variant, other = ("delta", "sotw") if proxy["xds"] == "delta" else ("sotw", "delta")

    before = await scrape(anonymous_api)
    assert sample(before, "turnout_xds_proxies", status="SYNCED") == 1
    assert sample(before, "turnout_xds_proxies", status="STALE") == 0
    assert sample(before, "turnout_xds_proxies", status="NACKED") == 0
    assert ("turnout_xds_proxy_lag_revisions", frozenset({("node", envoy.node_id)})) in before
    assert sample(before, "turnout_xds_proxy_lag_revisions", node=envoy.node_id) == 0
    for kind in ("cluster", "endpoint", "listener", "route"):
        assert sample(before, PUSHES, type=kind, variant=variant) >= 1, kind
        assert (PUSHES, frozenset({("type", kind), ("variant", other)})) not in before

    # One more revision, to a proxy that holds the one before: one first push of it.
    second = await api.post(
        "/v1/models/m/versions",
        json={"version": "v2", "endpoints": [{"address": "127.0.0.1", "port": 9002}]},
    )
    assert second.status_code == 201, second.text
    revision = int(second.headers["x-turnout-revision"])
    await synced_at(api, envoy.node_id, revision)
    after = await scrape(anonymous_api)

    assert sample(after, "turnout_revision") == revision
    assert sample(after, "turnout_xds_proxy_lag_revisions", node=envoy.node_id) == 0
    assert sample(after, COMMIT_TO_PUSH) - sample(before, COMMIT_TO_PUSH) == 1
    assert sample(after, PUSHES, type="cluster", variant=variant) > sample(
        before, PUSHES, type="cluster", variant=variant
    )
