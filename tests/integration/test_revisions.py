"""Revision history, diffs, rollback and dry runs, on SQLite and Postgres."""

from __future__ import annotations

import httpx

EP = {"address": "127.0.0.1", "port": 9001}
NO_CHANGE = {
    "added": [],
    "removed": [],
    "changed": {},
    "tenants": {"added": [], "removed": [], "changed": {}},
    "key_set_changed": False,
}


async def _setup(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/models", json={"name": "m", "protocol": "http"})).status_code == 201
    for i, version in enumerate(("v1", "v2")):
        body = {"version": version, "endpoints": [{**EP, "port": 9001 + i}]}
        assert (await api.post("/v1/models/m/versions", json=body)).status_code == 201
    response = await api.put("/v1/models/m/traffic", json={"weights": {"v1": 70, "v2": 30}})
    assert response.status_code == 200  # revision 4


async def test_history_lists_every_revision_newest_first(api: httpx.AsyncClient) -> None:
    await _setup(api)
    page = (await api.get("/v1/revisions", params={"limit": 3})).json()
    assert [r["revision"] for r in page["items"]] == [4, 3, 2]
    assert page["items"][0]["action"] == "traffic.update"
    rest = (await api.get("/v1/revisions", params={"cursor": page["next_cursor"]})).json()
    assert [r["revision"] for r in rest["items"]] == [1]
    assert rest["next_cursor"] is None

    detail = (await api.get("/v1/revisions/4")).json()
    assert detail["state"]["models"][0]["weights"] == [["v1", 70], ["v2", 30]]
    assert (await api.get("/v1/revisions/99")).status_code == 404


async def test_diff_names_model_and_envoy_changes(api: httpx.AsyncClient) -> None:
    await _setup(api)
    diff = (await api.get("/v1/revisions/4/diff")).json()
    assert (diff["from"], diff["to"]) == (3, 4)
    assert list(diff["state"]["changed"]) == ["m"]
    assert diff["resources"] == {
        "routes": {"added": [], "removed": [], "changed": ["turnout_routes"]}
    }
    created = (await api.get("/v1/revisions/3/diff", params={"against": 0})).json()
    assert created["state"]["added"] == ["m"]
    assert created["resources"]["clusters"]["added"] == ["m/v1", "m/v2"]


async def test_rollback_restores_an_earlier_state_as_a_new_revision(
    api: httpx.AsyncClient,
) -> None:
    await _setup(api)
    await api.patch("/v1/models/m/versions/v2", json={"endpoints": [{**EP, "port": 9555}]})
    await api.post("/v1/models", json={"name": "other", "protocol": "openai"})  # revision 6

    response = await api.post("/v1/revisions/3/rollback")
    assert response.status_code == 200, response.text
    assert response.json() == {"revision": 7, "restored": 3}

    assert [m["name"] for m in (await api.get("/v1/models")).json()] == ["m"]
    assert (await api.get("/v1/models/m/traffic")).json()["weights"] == {"v1": 100, "v2": 0}
    v2 = (await api.get("/v1/models/m/versions/v2")).json()
    assert v2["endpoints"][0]["port"] == 9002
    # The new revision's state equals the restored one.
    same = (await api.get("/v1/revisions/7/diff", params={"against": 3})).json()
    assert same["state"] == NO_CHANGE
    assert same["resources"] == {}
    event = (await api.get("/v1/audit/events", params={"limit": 1})).json()["items"][0]
    assert (event["action"], event["resource_id"], event["revision"]) == (
        "revision.rollback",
        "3",
        7,
    )


async def test_dry_run_reports_the_envoy_diff_and_changes_nothing(api: httpx.AsyncClient) -> None:
    await _setup(api)
    response = await api.put(
        "/v1/models/m/traffic", params={"dry_run": "true"}, json={"weights": {"v2": 100}}
    )
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome["dry_run"] is True
    assert outcome["revision"] == 5
    assert outcome["resources"] == {
        "routes": {"added": [], "removed": [], "changed": ["turnout_routes"]}
    }
    assert (await api.get("/v1/models/m/traffic")).json()["weights"] == {"v1": 70, "v2": 30}
    assert next(r["revision"] for r in (await api.get("/v1/revisions")).json()["items"]) == 4

    added = await api.post(
        "/v1/models/m/versions",
        params={"dry_run": "true"},
        json={"version": "v3", "endpoints": [{**EP, "port": 9003}]},
    )
    assert added.json()["resources"]["clusters"]["added"] == ["m/v3"]
    assert added.json()["resources"]["endpoints"]["added"] == ["m/v3"]
    assert (await api.get("/v1/models/m/versions/v3")).status_code == 404

    rollback = await api.post("/v1/revisions/1/rollback", params={"dry_run": "true"})
    assert rollback.json()["state"]["changed"]["m"]["after"]["versions"] == []
    assert len((await api.get("/v1/models/m/versions")).json()) == 2


async def test_dry_run_of_bad_input_is_still_an_error(api: httpx.AsyncClient) -> None:
    await _setup(api)
    response = await api.put(
        "/v1/models/m/traffic", params={"dry_run": "true"}, json={"weights": {"v9": 100}}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"


async def test_dry_run_is_audited_as_such_and_creates_no_key(api: httpx.AsyncClient) -> None:
    keys_before = (await api.get("/v1/keys")).json()
    response = await api.post(
        "/v1/keys", params={"dry_run": "true"}, json={"name": "ci", "role": "viewer"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["revision"] is None
    assert (await api.get("/v1/keys")).json() == keys_before
    await api.post("/v1/models", params={"dry_run": "1"}, json={"name": "x", "protocol": "http"})
    assert (await api.get("/v1/models/x")).status_code == 404
    events = (await api.get("/v1/audit/events", params={"limit": 2})).json()["items"]
    assert [e["outcome"] for e in events] == ["dry_run", "dry_run"]


async def test_diff_names_tenant_changes_and_the_listener_they_change(
    api: httpx.AsyncClient,
) -> None:
    await _setup(api)
    rate = {"requests_per_second": 5, "burst": 10}
    created = await api.post(
        "/v1/tenants", json={"name": "acme", "models": ["m"], "rate_limit": rate}
    )
    assert created.status_code == 201, created.text
    revision = int(created.headers["x-turnout-revision"])
    diff = (await api.get(f"/v1/revisions/{revision}/diff")).json()
    assert diff["state"]["tenants"]["added"] == ["acme"]
    assert diff["state"]["key_set_changed"] is True
    assert diff["state"]["changed"] == {}
    assert "acme" not in str(diff["state"]["tenants"]["changed"])
    assert diff["resources"]["listeners"]["changed"] == ["turnout_http"]

    await api.patch("/v1/tenants/acme", json={"rate_limit": {"requests_per_second": 7, "burst": 9}})
    changed = (await api.get(f"/v1/revisions/{revision + 1}/diff")).json()
    sides = changed["state"]["tenants"]["changed"]["acme"]
    assert (sides["before"]["requests_per_second"], sides["after"]["requests_per_second"]) == (5, 7)
    assert changed["resources"] != {}


async def test_rollback_keeps_the_current_access_state(api: httpx.AsyncClient) -> None:
    await _setup(api)  # revision 4: no tenant yet
    rate = {"requests_per_second": 5, "burst": 10}
    await api.post("/v1/tenants", json={"name": "acme", "models": ["m"], "rate_limit": rate})
    credential = (await api.post("/v1/tenants/acme/credentials")).json()
    await api.delete(f"/v1/tenants/acme/credentials/{credential['id']}")
    rollback = await api.post("/v1/revisions/4/rollback")
    assert rollback.status_code == 200, rollback.text
    after = int(rollback.headers["x-turnout-revision"])
    assert [t["name"] for t in (await api.get("/v1/tenants")).json()] == ["acme"]
    state = (await api.get(f"/v1/revisions/{after}")).json()["state"]
    assert [t["name"] for t in state["tenants"]] == ["acme"]
    assert state["tenants"][0]["revoked"] == [credential["jti"]]
    # Nothing of the traffic state differed, so the rollback changed no model.
    assert (await api.get(f"/v1/revisions/{after}/diff")).json()["state"] == NO_CHANGE


async def test_dry_run_takes_only_true_false_1_or_0_and_nothing_else(
    api: httpx.AsyncClient,
) -> None:
    await _setup(api)
    body = {"weights": {"v2": 100}}
    for query in ("dry_run=yes", "dry_run=", "dryrun=true", "dry_run=true&dry_run=false"):
        response = await api.put(f"/v1/models/m/traffic?{query}", json=body)
        assert response.status_code == 422, (query, response.text)
        assert response.json()["error"] == "invalid_input", query
        event = (await api.get("/v1/audit/events", params={"limit": 1})).json()["items"][0]
        assert (event["action"], event["outcome"]) == ("traffic.update", "rejected"), query
    assert (await api.get("/v1/models/m/traffic")).json()["weights"] == {"v1": 70, "v2": 30}
    for value, changes in (("TRUE", False), ("0", True)):
        response = await api.put(f"/v1/models/m/traffic?dry_run={value}", json=body)
        assert response.status_code == 200, response.text
        assert ("dry_run" in response.json()) is not changes
    assert (await api.get("/v1/models/m/traffic")).json()["weights"] == {"v1": 0, "v2": 100}
