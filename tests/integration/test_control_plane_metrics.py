"""The control plane's own series on GET /metrics move with what the replica does:
admin requests by route template, the sync loop, translation, database time and
the revision it serves. (Pushes and proxies: tests/e2e/test_xds_metrics.py.)"""

from __future__ import annotations

import httpx

from controlplane.runtime import ControlPlane
from tests.support import Samples, eventually, sample, scrape

REQUESTS = "turnout_api_requests_total"
DURATIONS = "turnout_api_request_duration_seconds_count"


async def test_admin_requests_are_counted_by_route_template_and_status(
    api: httpx.AsyncClient, anonymous_api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    before = await scrape(anonymous_api)

    created = await api.post("/v1/models", json={"name": "m", "protocol": "http"})
    assert created.status_code == 201, created.text
    assert (await api.get("/v1/models/m")).status_code == 200
    assert (await api.get("/v1/models/nope")).status_code == 404
    assert (await api.get("/no/such/route/42")).status_code == 404
    # Answered by the gateway before any route runs: still the route's template.
    too_large = b"x" * (control_plane.settings.max_request_bytes + 1)
    assert (await api.post("/v1/models", content=too_large)).status_code == 413

    after = await scrape(anonymous_api)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved(REQUESTS, method="POST", route="/v1/models", status="201") == 1
    assert moved(REQUESTS, method="POST", route="/v1/models", status="413") == 1
    assert moved(REQUESTS, method="GET", route="/v1/models/{model}", status="200") == 1
    assert moved(REQUESTS, method="GET", route="/v1/models/{model}", status="404") == 1
    assert moved(REQUESTS, method="GET", route="unmatched", status="404") == 1
    # The scrape before this one is counted too, under its own route.
    assert moved(REQUESTS, method="GET", route="/metrics", status="200") == 1
    assert moved(DURATIONS, method="GET", route="/v1/models/{model}") == 2
    assert moved(DURATIONS, method="POST", route="/v1/models") == 2
    # Raw paths never become labels.
    routes = {dict(labels).get("route", "") for _, labels in after}
    assert not {route for route in routes if "nope" in route or "42" in route}


async def test_a_change_moves_the_revision_sync_translation_and_database_series(
    api: httpx.AsyncClient, anonymous_api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    before = await scrape(anonymous_api)

    created = await api.post("/v1/models", json={"name": "m", "protocol": "http"})
    assert created.status_code == 201, created.text
    revision = int(created.headers["x-turnout-revision"])

    async def passed() -> Samples | None:
        # Until the pass that published the revision has ended (and been timed).
        now = await scrape(anonymous_api)
        published = ("turnout_sync_seconds_count", frozenset({("result", "published")}))
        if control_plane.sync.revision == revision and now.get(published, 0) > before.get(
            published, 0
        ):
            return now
        return None

    after = await eventually(passed)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert sample(after, "turnout_revision") == revision
    assert moved("turnout_sync_seconds_count", result="published") >= 1
    assert moved("turnout_xds_translation_seconds_count") >= 1
    # The write inserted rows, the sync loop read them.
    assert moved("turnout_database_seconds_count", operation="insert") >= 1
    assert moved("turnout_database_seconds_count", operation="select") >= 1
    assert moved("turnout_database_seconds_sum", operation="select") > 0
    # No proxy is connected: every status is there, at zero.
    for status in ("SYNCED", "STALE", "NACKED"):
        assert ("turnout_xds_proxies", frozenset({("status", status)})) in after
        assert sample(after, "turnout_xds_proxies", status=status) == 0
