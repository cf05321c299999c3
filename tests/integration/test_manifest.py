"""The models manifest through the admin API and the CLI, on SQLite and Postgres:
export, plan, apply as one revision, and an export applied back changes nothing."""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from controlplane.runtime import ControlPlane
from tests.support import config_state, run_turnout

EP = {"address": "10.0.0.1", "port": 8000}


def _manifest(*models: dict[str, object]) -> dict[str, object]:
    return {"apiVersion": "turnout/v1", "kind": "Models", "models": list(models)}


SENTIMENT = {
    "name": "sentiment",
    "protocol": "http",
    "policy": {"timeouts": {"request_timeout_ms": 2000}},
    "versions": [
        {"name": "v1", "endpoints": [EP]},
        {
            "name": "v2",
            "endpoints": [{"address": "sentiment-v2.ml.svc.cluster.local", "port": 8000}],
            "policy": {"circuit_breakers": {"max_requests": 64}},
        },
    ],
    "traffic": {"v1": 90, "v2": 10},
}
CHAT = {"name": "chat", "protocol": "openai", "versions": [{"name": "a", "endpoints": [EP]}]}


async def _events(api: httpx.AsyncClient, action: str) -> list[dict[str, object]]:
    params = {"action": action, "limit": 100}
    items: list[dict[str, object]] = (await api.get("/v1/audit/events", params=params)).json()[
        "items"
    ]
    return items


async def test_an_apply_is_one_revision_and_an_export_applied_back_changes_nothing(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    response = await api.post("/v1/manifest", json=_manifest(SENTIMENT, CHAT))
    assert response.status_code == 200, response.text
    applied = response.json()
    assert applied["created"] == ["chat", "sentiment"]
    assert (await api.get("/v1/models/sentiment/traffic")).json()["weights"] == {
        "v1": 90,
        "v2": 10,
    }
    assert (await api.get("/v1/models/chat/traffic")).json()["weights"] == {"a": 100}
    revisions = (await api.get("/v1/revisions")).json()["items"]
    assert [r["revision"] for r in revisions] == [applied["revision"]]
    (event,) = await _events(api, "manifest.apply")
    assert event["revision"] == applied["revision"]

    exported = (await api.get("/v1/manifest")).json()
    assert exported["revision"] == applied["revision"]
    before = await config_state(api, control_plane)
    again = await api.post("/v1/manifest", json=exported | {"revision": None})
    assert again.status_code == 200, again.text
    assert again.json() == {
        "revision": None,
        "created": [],
        "changed": [],
        "deleted": [],
        "unchanged": ["chat", "sentiment"],
    }
    assert (await config_state(api, control_plane))[0] == before[0]


async def test_the_plan_is_a_dry_run_and_a_stale_plan_is_refused(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    assert (await api.post("/v1/manifest", json=_manifest(SENTIMENT))).status_code == 200
    moved = {**SENTIMENT, "traffic": {"v1": 50, "v2": 50}}
    before = await config_state(api, control_plane)
    plan = await api.post("/v1/manifest", params={"dry_run": "true"}, json=_manifest(moved))
    assert plan.status_code == 200, plan.text
    assert list(plan.json()["state"]["changed"]) == ["sentiment"]
    assert plan.json()["resources"]["routes"]["changed"] == ["turnout_routes"]
    assert await config_state(api, control_plane) == before

    # Someone else changes the state between the plan and the apply: 412, nothing changed.
    response = await api.put("/v1/models/sentiment/traffic", json={"weights": {"v1": 100}})
    assert response.status_code == 200
    stale = _manifest(moved) | {"base_revision": plan.json()["revision"] - 1}
    refused = await api.post("/v1/manifest", json=stale)
    assert refused.status_code == 412, refused.text
    assert refused.json()["error"] == "precondition_failed"
    assert (await api.get("/v1/models/sentiment/traffic")).json()["weights"]["v1"] == 100


async def test_bad_manifests_change_nothing_and_say_why(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    assert (await api.post("/v1/manifest", json=_manifest(SENTIMENT))).status_code == 200
    before = await config_state(api, control_plane)
    shadowing_nothing = {**CHAT, "policy": {"shadow": {"version": "b", "percent": 5}}}
    for bad, where in [
        (_manifest({**SENTIMENT, "traffic": {"v1": 90, "v3": 10}}), "v3"),
        (_manifest(shadowing_nothing), "unknown_versions"),
        (_manifest(SENTIMENT, SENTIMENT), "more than once"),
        ({"models": [{"name": "x", "protocol": "grpc"}]}, "protocol"),
        (_manifest({**CHAT, "versions": [{"name": "a", "endpoints": [EP, EP]}]}), "twice"),
    ]:
        response = await api.post("/v1/manifest", json=bad)
        assert response.status_code == 422, response.text
        assert where in response.text
    assert await config_state(api, control_plane) == before


async def test_prune_deletes_what_the_manifest_leaves_out_and_traffic_left_out_stays(
    api: httpx.AsyncClient,
) -> None:
    assert (await api.post("/v1/manifest", json=_manifest(SENTIMENT, CHAT))).status_code == 200
    # No traffic given: the versions keep their weights.
    unsplit = {k: v for k, v in SENTIMENT.items() if k != "traffic"}
    kept = await api.post("/v1/manifest", json=_manifest(unsplit))
    assert kept.json()["unchanged"] == ["sentiment"] and kept.json()["revision"] is None
    pruned = await api.post("/v1/manifest", json=_manifest(unsplit) | {"prune": True})
    assert pruned.json()["deleted"] == ["chat"]
    assert (await api.get("/v1/models/chat")).status_code == 404
    assert (await api.get("/v1/models/sentiment/traffic")).json()["weights"]["v2"] == 10


async def test_export_and_apply_from_the_cli(api: httpx.AsyncClient, tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(_manifest(SENTIMENT)))
    code, out, err = await run_turnout(api, "apply", "-f", str(path), "--dry-run")
    assert code == 0, err
    assert "+ model sentiment" in out and "clusters 2 added" in out
    assert (await api.get("/v1/models/sentiment")).status_code == 404

    code, out, err = await run_turnout(api, "apply", "-f", str(path))
    assert code == 0, err
    assert "applied as revision" in out and "1 created" in out

    code, exported, err = await run_turnout(api, "export")
    assert code == 0, err
    assert yaml.safe_load(exported)["models"][0]["traffic"] == {"v1": 90, "v2": 10}
    code, out, err = await run_turnout(api, "apply", "-f", "-", stdin=exported.encode())
    assert code == 0, err
    assert "no changes" in out

    path.write_text("models: [\n")
    code, out, err = await run_turnout(api, "apply", "-f", str(path))
    assert code == 2 and "not valid YAML at line" in err
    path.write_text(yaml.safe_dump(_manifest({**SENTIMENT, "traffic": {"v1": 1}})))
    code, out, err = await run_turnout(api, "apply", "-f", str(path))
    assert code == 2 and "add up to 100" in err, err
