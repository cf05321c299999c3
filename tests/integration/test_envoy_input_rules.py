"""Values Envoy would reject are refused at the API with 422, and change nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from controlplane.runtime import ControlPlane
from tests.support import config_state


@pytest.mark.parametrize(
    ("path", "method", "body", "field"),
    [
        (
            "/v1/models/m/versions",
            "post",
            {"version": "v2", "endpoints": [{"address": "::1%abc", "port": 9001}]},
            "address",
        ),
        (
            "/v1/models/m/versions/v1",
            "patch",
            {"endpoints": [{"address": "fe80::1%eth0", "port": 9001}]},
            "address",
        ),
        (
            "/v1/models/m/policy",
            "put",
            {"experiments": [{"header": "x-tenant", "value": "a\r\nb", "version": "v1"}]},
            "value",
        ),
    ],
)
async def test_values_envoy_rejects_get_422(
    api: httpx.AsyncClient,
    control_plane: ControlPlane,
    path: str,
    method: str,
    body: dict[str, Any],
    field: str,
) -> None:
    await api.post("/v1/models", json={"name": "m", "protocol": "http"})
    response = await api.post(
        "/v1/models/m/versions",
        json={"version": "v1", "endpoints": [{"address": "127.0.0.1", "port": 9001}]},
    )
    assert response.status_code == 201, response.text
    before = await config_state(api, control_plane)
    response = await api.request(method, path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert field in response.text
    assert await config_state(api, control_plane) == before
