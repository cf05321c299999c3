"""The policy endpoints over real HTTP, on SQLite and on Postgres."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from controlplane.runtime import ControlPlane
from tests.support import config_state

EP = {"address": "127.0.0.1", "port": 9001}

MODEL_POLICY: dict[str, Any] = {
    "timeouts": {
        "request_timeout_ms": 30000,
        "idle_timeout_ms": 10000,
        "stream_idle_timeout_ms": 20000,
    },
    "retries": {
        "retry_on": ["5xx", "connect-failure", "retriable-status-codes"],
        "num_retries": 2,
        "per_try_timeout_ms": 5000,
        "retriable_status_codes": [429],
        "backoff_base_ms": 25,
        "backoff_max_ms": 250,
        "budget_percent": 20.0,
        "budget_min_concurrency": 3,
    },
    "shadow": {
        "version": "v2",
        "percent": 10.0,
        "compare_percent": 25.0,
        "keep_bodies": True,
        "max_body_bytes": 4096,
    },
    "experiments": [{"header": "x-tenant", "value": "acme", "version": "v2"}],
    "sticky": {"header": "x-user-id"},
    "max_request_bytes": 65536,
}
VERSION_POLICY: dict[str, Any] = {
    "circuit_breakers": {
        "max_connections": 100,
        "max_pending_requests": 50,
        "max_requests": 200,
        "max_retries": 3,
    },
    "outlier_detection": {
        "consecutive_5xx": 3,
        "interval_ms": 1000,
        "base_ejection_time_ms": 5000,
        "max_ejection_percent": 50,
    },
    "health_check": {
        "path": "/healthz",
        "interval_ms": 500,
        "timeout_ms": 250,
        "healthy_threshold": 1,
        "unhealthy_threshold": 2,
    },
    "load_balancing": {"policy": "ring_hash", "hash_header": "x-session"},
    "served_model_name": "meta-llama/Llama-3.1-8B-Instruct",
}
EMPTY_MODEL_POLICY = {
    "timeouts": None,
    "retries": None,
    "shadow": None,
    "experiments": [],
    "sticky": None,
    "max_request_bytes": None,
}
EMPTY_VERSION_POLICY = {
    "circuit_breakers": None,
    "outlier_detection": None,
    "health_check": None,
    "load_balancing": None,
    "batching": None,
    "served_model_name": None,
}


async def _model_with_versions(api: httpx.AsyncClient, *versions: str) -> None:
    assert (await api.post("/v1/models", json={"name": "m", "protocol": "http"})).status_code == 201
    for i, version in enumerate(versions):
        body = {"version": version, "endpoints": [{**EP, "port": 9001 + i}]}
        assert (await api.post("/v1/models/m/versions", json=body)).status_code == 201


async def test_policies_start_empty_and_put_replaces_them(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    await _model_with_versions(api, "v1", "v2")
    assert (await api.get("/v1/models/m/policy")).json() == EMPTY_MODEL_POLICY
    assert (await api.get("/v1/models/m/versions/v1/policy")).json() == EMPTY_VERSION_POLICY
    revision, events = await config_state(api, control_plane)

    put = await api.put("/v1/models/m/policy", json=MODEL_POLICY)
    assert put.status_code == 200, put.text
    assert put.json() == MODEL_POLICY
    assert (await api.get("/v1/models/m/policy")).json() == MODEL_POLICY
    put = await api.put("/v1/models/m/versions/v1/policy", json=VERSION_POLICY)
    assert put.status_code == 200, put.text
    stored = (await api.get("/v1/models/m/versions/v1/policy")).json()
    assert stored == {**VERSION_POLICY, "batching": None}
    assert (await api.get("/v1/models/m/versions/v2/policy")).json() == EMPTY_VERSION_POLICY
    assert await config_state(api, control_plane) == (revision + 2, events + 2)

    # PUT replaces the whole policy: what is left out is gone.
    put = await api.put("/v1/models/m/policy", json={"timeouts": {"request_timeout_ms": 1000}})
    assert put.json() == {
        **EMPTY_MODEL_POLICY,
        "timeouts": {
            "request_timeout_ms": 1000,
            "idle_timeout_ms": None,
            "stream_idle_timeout_ms": None,
        },
    }
    newest = (await api.get("/v1/audit/events", params={"limit": 1})).json()["items"][0]
    assert newest["action"] == "model.policy.update"
    assert newest["resource_id"] == "m"
    assert newest["before"]["policy"]["sticky"] == {"header": "x-user-id"}
    assert newest["after"]["policy"]["sticky"] is None
    assert (await api.put("/v1/models/m/versions/v1/policy", json={})).status_code == 200
    assert (await api.get("/v1/models/m/versions/v1/policy")).json() == EMPTY_VERSION_POLICY


async def test_defaults_fill_in_left_out_fields(api: httpx.AsyncClient) -> None:
    await _model_with_versions(api, "v1")
    put = await api.put("/v1/models/m/policy", json={"retries": {"num_retries": 2}})
    assert put.json()["retries"]["retry_on"] == ["5xx", "reset", "connect-failure"]
    put = await api.put("/v1/models/m/versions/v1/policy", json={"health_check": {}})
    assert put.json()["health_check"]["path"] == "/healthz"


async def test_a_version_named_by_the_policy_cannot_be_deleted(api: httpx.AsyncClient) -> None:
    await _model_with_versions(api, "v1", "v2")
    await api.put("/v1/models/m/policy", json={"shadow": {"version": "v2", "percent": 5}})
    refused = await api.delete("/v1/models/m/versions/v2")
    assert refused.status_code == 409
    assert "policy" in refused.json()["detail"]
    await api.put("/v1/models/m/policy", json={})
    assert (await api.delete("/v1/models/m/versions/v2")).status_code == 204


def _retries(**fields: Any) -> dict[str, Any]:
    return {"retries": {"num_retries": 2, **fields}}


@pytest.mark.parametrize(
    ("path", "body", "status", "error", "reason"),
    [
        ("/v1/models/nope/policy", {}, 404, "not_found", "nope"),
        ("/v1/models/m/versions/v9/policy", {}, 404, "not_found", "v9"),
        (
            "/v1/models/m/policy",
            {
                "timeouts": {"request_timeout_ms": 1000},
                "retries": {"num_retries": 2, "per_try_timeout_ms": 2000},
            },
            422,
            "invalid_input",
            "per_try_timeout_ms",
        ),
        ("/v1/models/m/policy", _retries(per_try_timeout_ms=61000), 422, "invalid_input", "60000"),
        ("/v1/models/m/policy", _retries(num_retries=-1), 422, "validation_error", "num_retries"),
        (
            "/v1/models/m/policy",
            _retries(retry_on=["sometimes"]),
            422,
            "validation_error",
            "retry_on",
        ),
        (
            "/v1/models/m/policy",
            _retries(retriable_status_codes=[503]),
            422,
            "validation_error",
            "retriable-status-codes",
        ),
        (
            "/v1/models/m/policy",
            _retries(backoff_base_ms=100, backoff_max_ms=10),
            422,
            "validation_error",
            "backoff_max_ms",
        ),
        (
            "/v1/models/m/policy",
            {"timeouts": {"stream_idle_timeout_ms": 0}},
            422,
            "validation_error",
            "stream_idle_timeout_ms",
        ),
        (
            # It goes into JSON bodies as it is: no quote, backslash or space.
            "/v1/models/m/versions/v1/policy",
            {"served_model_name": 'say "hi"'},
            422,
            "validation_error",
            "served_model_name",
        ),
        (
            "/v1/models/m/policy",
            {"shadow": {"version": "v7", "percent": 5}},
            422,
            "invalid_input",
            "v7",
        ),
        (
            "/v1/models/m/policy",
            {"shadow": {"version": "v2", "percent": 150}},
            422,
            "validation_error",
            "percent",
        ),
        (
            "/v1/models/m/policy",
            {"shadow": {"version": "v2", "percent": 5, "compare_percent": -1}},
            422,
            "validation_error",
            "compare_percent",
        ),
        (
            "/v1/models/m/policy",
            {"shadow": {"version": "v2", "percent": 5, "max_body_bytes": 1024 * 1024}},
            422,
            "validation_error",
            "max_body_bytes",
        ),
        (
            "/v1/models/m/policy",
            {"experiments": [{"header": "x-tenant", "value": "acme", "version": "v9"}]},
            422,
            "invalid_input",
            "v9",
        ),
        (
            "/v1/models/m/policy",
            {
                "experiments": [
                    {"header": "x-tenant", "value": "acme", "version": "v1"},
                    {"header": "x-tenant", "value": "acme", "version": "v2"},
                ]
            },
            422,
            "invalid_input",
            "acme",
        ),
        (
            "/v1/models/m/policy",
            {"experiments": [{"header": "X_Tenant", "value": "a", "version": "v1"}]},
            422,
            "validation_error",
            "header",
        ),
        ("/v1/models/m/policy", {"sticky": {"header": "x-envoy-foo"}}, 422, "validation_error", ""),
        ("/v1/models/m/policy", {"surprise": 1}, 422, "validation_error", "surprise"),
        (
            "/v1/models/m/versions/v1/policy",
            {"circuit_breakers": {"max_requests": -5}},
            422,
            "validation_error",
            "max_requests",
        ),
        (
            "/v1/models/m/versions/v1/policy",
            {"outlier_detection": {"consecutive_5xx": 0}},
            422,
            "validation_error",
            "consecutive_5xx",
        ),
        (
            "/v1/models/m/versions/v1/policy",
            {"outlier_detection": {"max_ejection_percent": 101}},
            422,
            "validation_error",
            "max_ejection_percent",
        ),
        (
            "/v1/models/m/versions/v1/policy",
            {"health_check": {"path": "healthz"}},
            422,
            "validation_error",
            "path",
        ),
        (
            "/v1/models/m/versions/v1/policy",
            {"load_balancing": {"policy": "ring_hash"}},
            422,
            "validation_error",
            "hash_header",
        ),
        (
            "/v1/models/m/versions/v1/policy",
            {"load_balancing": {"policy": "random"}},
            422,
            "validation_error",
            "policy",
        ),
    ],
)
async def test_bad_policies_get_the_reason_and_change_nothing(
    api: httpx.AsyncClient,
    control_plane: ControlPlane,
    path: str,
    body: dict[str, Any],
    status: int,
    error: str,
    reason: str,
) -> None:
    await _model_with_versions(api, "v1", "v2")
    await api.put("/v1/models/m/policy", json={"timeouts": {"request_timeout_ms": 5000}})
    before = await config_state(api, control_plane)
    policies_before = [
        (await api.get(p)).json()
        for p in ("/v1/models/m/policy", "/v1/models/m/versions/v1/policy")
    ]
    response = await api.put(path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.json()["detail"]
    assert reason in response.text
    assert await config_state(api, control_plane) == before
    assert [
        (await api.get(p)).json()
        for p in ("/v1/models/m/policy", "/v1/models/m/versions/v1/policy")
    ] == policies_before
