"""The web console in a real browser, against a running `turnout up --demo`: sign in,
move the split and see Envoy follow, watch the live charts fill, revisions and
rollback, the audit log filtered and exported, a NACKed proxy's error, and a viewer
key that is offered no change and whose attempt through the API is refused."""

from __future__ import annotations

import csv
import io
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from playwright.sync_api import Page, expect

from controlplane.bootstrap import XdsAddress, dump_bootstrap, render_bootstrap
from controlplane.processes import envoy_binary
from tests.browser.conftest import Mesh
from tests.conftest import free_port

pytestmark = [pytest.mark.browser, pytest.mark.envoy]

T = TypeVar("T")
ENVOY_FLAGS = ["--disable-hot-restart", "--concurrency", "1", "--log-level", "warn"]


def until(probe: Callable[[], T | None], *, timeout: float = 15.0) -> T:
    """Call ``probe`` until it returns something truthy; return it (else fail)."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
        time.sleep(0.1)


def sign_in(page: Page, mesh: Mesh, key: str | None = None) -> None:
    page.goto(f"{mesh.api}/console")
    page.get_by_label("API key").fill(key or mesh.key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who-name")).to_be_visible()


def shoot(page: Page, screenshots: Path, name: str) -> None:
    page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)


def narrow(page: Page, screenshots: Path, name: str) -> None:
    """On a phone-sized screen the page fits its width: wide tables scroll on their own."""
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("#view h1")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shoot(page, screenshots, name)


def served(mesh: Mesh, count: int = 20) -> Counter[str]:
    with httpx.Client(timeout=5) as client:
        return Counter(
            client.post(f"{mesh.listener}/models/demo/predict", json={"x": 1}).headers[
                "x-turnout-version"
            ]
            for _ in range(count)
        )


def split(mesh: Mesh) -> dict[str, int]:
    with mesh.admin() as admin:
        weights: dict[str, int] = admin.get("/v1/models/demo/traffic").json()["weights"]
    return weights


def test_console_loads_without_a_key_and_refuses_a_bad_one(page: Page, mesh: Mesh) -> None:
    response = page.goto(f"{mesh.api}/console")
    assert response is not None and response.ok
    assert page.url == f"{mesh.api}/console/"
    assert "default-src 'self'" in response.headers["content-security-policy"]
    # Keyboard only: the key field has the focus, Enter signs in.
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type("tk_" + "x" * 36)
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    assert "tk_" not in page.url
    # Loading the page is no change: nothing about it lands in the audit log.
    with mesh.admin() as admin:
        events = admin.get("/v1/audit/events", params={"limit": 500}).json()["items"]
    assert not [e for e in events if "console" in e["action"]]


def test_the_split_slider_moves_envoy_and_a_concurrent_change_is_a_conflict(
    page: Page, mesh: Mesh, screenshots: Path
) -> None:
    sign_in(page, mesh)
    expect(page.locator("#who-name")).to_have_text("demo-admin (admin)")
    expect(page.get_by_role("heading", name="demo")).to_be_visible()
    shoot(page, screenshots, "models")
    # Keyboard only: the slider is an <input type=range> with a label.
    slider = page.get_by_label("Weight of v2")
    slider.focus()
    page.keyboard.press("End")
    expect(page.locator("output[for='split-demo-v2']")).to_have_text("100%")
    expect(page.locator("output[for='split-demo-v1']")).to_have_text("0%")
    page.get_by_role("button", name="Review change").click()
    confirm = page.get_by_role("group", name="Confirm the new split")
    expect(confirm).to_contain_text("v1 90% → 0%")
    # The dry run lists the Envoy resources the change touches, and writes nothing.
    expect(confirm.locator("ul.resources li").first).to_contain_text("changed")
    shoot(page, screenshots, "models-confirm")
    assert split(mesh) == {"v1": 90, "v2": 10, "v3": 0}
    confirm.get_by_role("button", name="Apply split").click()
    expect(page.get_by_role("status").filter(has_text="Applied as revision")).to_be_visible()
    assert split(mesh) == {"v1": 0, "v2": 100, "v3": 0}
    # Envoy follows: every request through the data port now answers v2.
    until(lambda: served(mesh) == Counter({"v2": 20}))

    # Someone else changes the split after the page loaded it: applying is refused.
    page.reload()
    expect(page.locator("output[for='split-demo-v2']")).to_have_text("100%")
    with mesh.admin() as admin:
        moved = admin.put("/v1/models/demo/traffic", json={"weights": {"v1": 50, "v2": 50}})
        assert moved.status_code == 200, moved.text
    page.get_by_label("Weight of v1").focus()
    page.keyboard.press("End")
    page.get_by_role("button", name="Review change").click()
    expect(page.get_by_role("alert")).to_contain_text("Conflict")
    expect(page.locator("output[for='split-demo-v1']")).to_have_text("50%")
    assert split(mesh) == {"v1": 50, "v2": 50, "v3": 0}

    page.reload()
    expect(page.get_by_label("Weight of v2")).to_be_visible()
    narrow(page, screenshots, "models-narrow")


@pytest.fixture
def traffic(mesh: Mesh) -> Iterator[None]:
    """Requests through Envoy, a few a second, while the test runs."""
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.wait(0.05):
                client.post(f"{mesh.listener}/models/demo/predict", json={"x": 1})

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    yield
    stop.set()
    sender.join(timeout=10)


def chart_points(page: Page, title: str) -> int:
    figure = page.locator("figure").filter(has=page.locator("figcaption", has_text=title))
    return int(figure.locator("svg").get_attribute("data-points") or 0)


def test_the_live_charts_fill(page: Page, mesh: Mesh, traffic: None, screenshots: Path) -> None:
    sign_in(page, mesh)
    page.get_by_role("link", name="Live").click()
    expect(page.get_by_label("Model")).to_have_value("demo")
    # Latency has points only for polls that saw requests: three of them, per version.
    until(lambda: chart_points(page, "Latency p50") >= 6, timeout=30)
    assert chart_points(page, "Requests per second") >= 6
    assert chart_points(page, "Latency p99") >= 6
    expect(page.locator("figure svg polyline").first).to_be_attached()
    shoot(page, screenshots, "live")
    narrow(page, screenshots, "live-narrow")


def test_revisions_diff_and_rollback(page: Page, mesh: Mesh, screenshots: Path) -> None:
    with mesh.admin() as admin:
        newest = admin.get("/v1/revisions", params={"limit": 1}).json()["items"][0]["revision"]
    sign_in(page, mesh)
    page.get_by_role("link", name="Revisions").click()
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=str(newest)))
    row.get_by_role("button", name="Diff").click()
    expect(page.locator("#diff")).to_contain_text(f"Revision {newest - 1} → {newest}")
    expect(page.locator("#diff")).to_contain_text("changed demo")
    shoot(page, screenshots, "revisions")
    # Roll back to the revision before: a confirm step first, then a new revision.
    before = split(mesh)
    older = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=str(newest - 1)))
    older.get_by_role("button", name="Roll back").click()
    assert split(mesh) == before  # nothing yet
    page.get_by_role("button", name=f"Confirm rollback to {newest - 1}").click()
    expect(page.get_by_role("status").filter(has_text="Rolled back")).to_contain_text(
        f"revision {newest + 1} restores revision {newest - 1}"
    )
    assert split(mesh) != before


def test_the_audit_log_filters_exports_and_verifies(
    page: Page, mesh: Mesh, screenshots: Path
) -> None:
    sign_in(page, mesh)
    page.get_by_role("link", name="Audit").click()
    expect(page.get_by_role("status").filter(has_text="The chain is intact")).to_be_visible()
    page.get_by_label("Action").fill("traffic.update")
    page.get_by_label("Outcome").select_option("success")
    with mesh.admin() as admin:
        wanted = admin.get(
            "/v1/audit/events", params={"action": "traffic.update", "outcome": "success"}
        ).json()["items"]
    assert wanted
    page.get_by_role("button", name="Filter").click()
    actions = page.locator("#audit-results tbody tr td:nth-child(4)")
    expect(actions).to_have_text(["traffic.update"] * len(wanted))
    ids = page.locator("#audit-results tbody tr td:nth-child(1)").all_inner_texts()
    assert ids == [str(e["id"]) for e in wanted]
    shoot(page, screenshots, "audit")
    # A time range (UTC) that ends before any of them: nothing matches.
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    page.get_by_label("Until (UTC)").fill(an_hour_ago.strftime("%Y-%m-%dT%H:%M:%S"))
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#audit-results")).to_have_text("No events match.")
    page.get_by_label("Until (UTC)").fill("")
    page.get_by_label("Since (UTC)").fill(an_hour_ago.strftime("%Y-%m-%dT%H:%M:%S"))
    page.get_by_role("button", name="Filter").click()
    expect(actions).to_have_text(["traffic.update"] * len(wanted))
    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    assert download.value.suggested_filename == "turnout-audit.csv"
    exported = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert sorted(int(e["id"]) for e in exported) == sorted(e["id"] for e in wanted)
    assert {e["action"] for e in exported} == {"traffic.update"}
    assert {e["outcome"] for e in exported} == {"success"}


def test_a_viewer_is_offered_no_change_and_the_api_refuses_one(
    page: Page, mesh: Mesh, screenshots: Path
) -> None:
    name = f"viewer-{uuid.uuid4().hex[:6]}"
    with mesh.admin() as admin:
        created = admin.post("/v1/keys", json={"name": name, "role": "viewer"})
        assert created.status_code == 201, created.text
    before = split(mesh)
    sign_in(page, mesh, created.json()["key"])
    expect(page.locator("#who-name")).to_have_text(f"{name} (viewer)")
    expect(page.get_by_role("heading", name="demo")).to_be_visible()
    expect(page.get_by_role("link", name="Audit")).to_be_hidden()
    expect(page.locator("input[type=range]")).to_have_count(0)
    expect(page.get_by_role("button", name="Review change")).to_have_count(0)
    shoot(page, screenshots, "models-viewer")
    page.get_by_role("link", name="Revisions").click()
    expect(page.get_by_role("button", name="Diff").first).to_be_visible()
    expect(page.get_by_role("button", name="Roll back")).to_have_count(0)
    # The same change sent from the page with the viewer's key: 403, nothing changes.
    status, body = page.evaluate(
        """async () => {
            const r = await fetch("/v1/models/demo/traffic", {method: "PUT",
              headers: {"Authorization": `Bearer ${sessionStorage.getItem("turnout.key")}`,
                        "Content-Type": "application/json"},
              body: JSON.stringify({weights: {v1: 100, v2: 0}})});
            return [r.status, await r.json()];
        }"""
    )
    assert status == 403 and body["error"] == "permission_denied", body
    assert split(mesh) == before
    with mesh.admin() as admin:
        denied = admin.get("/v1/audit/events", params={"actor": name}).json()["items"]
    assert [(e["action"], e["outcome"]) for e in denied] == [("traffic.update", "denied")]


def test_an_auditor_gets_the_audit_pages_and_no_write_controls(page: Page, mesh: Mesh) -> None:
    with mesh.admin() as admin:
        created = admin.post("/v1/keys", json={"name": "console-auditor", "role": "auditor"})
        assert created.status_code == 201, created.text
    sign_in(page, mesh, created.json()["key"])
    expect(page.get_by_role("heading", name="demo")).to_be_visible()
    expect(page.locator("input[type=range]")).to_have_count(0)
    page.get_by_role("link", name="Audit").click()
    expect(page.get_by_role("status").filter(has_text="The chain is intact")).to_be_visible()
    expect(page.locator("#audit-results tbody tr").first).to_be_visible()


def test_the_rollouts_page_shows_steps_and_gates_and_pauses_resumes_and_aborts(
    page: Page, mesh: Mesh, screenshots: Path
) -> None:
    # A rollout that stays on its first step: its hold is long and it needs many requests.
    with mesh.admin() as admin:
        reset = admin.put("/v1/models/demo/traffic", json={"weights": {"v1": 100, "v2": 0}})
        assert reset.status_code == 200, reset.text
        started = admin.post(
            "/v1/models/demo/rollouts",
            json={
                "candidate": "v2",
                "steps": [{"weight": 10, "hold_s": 600}, {"weight": 100}],
                "gates": [{"metric": "error_rate", "max": 0.5}],
                "min_requests": 1_000_000,
                "on_failure": "rollback",
            },
        )
        assert started.status_code == 201, started.text
    rollout = started.json()["id"]

    def state() -> str:
        with mesh.admin() as admin:
            found: str = admin.get(f"/v1/models/demo/rollouts/{rollout}").json()["state"]
        return found

    def gates_judged() -> bool:
        with mesh.admin() as admin:
            return bool(admin.get(f"/v1/models/demo/rollouts/{rollout}").json()["gates"])

    until(gates_judged)  # the driver has applied the first step and judged its gates
    sign_in(page, mesh)
    page.get_by_role("link", name="Rollouts").click()
    shown = page.locator(".rollout").filter(has_text=f"Rollout {rollout}")
    expect(shown).to_contain_text("Step 1 of 2")
    gate = shown.get_by_role("row").filter(has=page.get_by_role("rowheader", name="error_rate"))
    expect(gate).to_contain_text("0.5")
    shoot(page, screenshots, "rollouts")
    shown.get_by_role("button", name="Pause").click()
    until(lambda: state() == "paused")
    shown = page.locator(".rollout").filter(has_text=f"Rollout {rollout}")
    expect(shown.locator(".badge").first).to_have_text("paused")
    shown.get_by_role("button", name="Resume").click()
    until(lambda: state() != "paused")
    shown = page.locator(".rollout").filter(has_text=f"Rollout {rollout}")
    shown.get_by_role("button", name="Abort").click()
    assert state() != "aborted"  # a confirm step first
    shown.get_by_role("button", name="Confirm abort").click()
    until(lambda: state() == "aborted")
    assert split(mesh) == {"v1": 100, "v2": 0, "v3": 0}


def test_a_nacked_proxy_shows_its_error(
    page: Page, mesh: Mesh, screenshots: Path, tmp_path: Path
) -> None:
    # A second Envoy on the mesh's listener port, which the demo's Envoy holds: it
    # refuses the listener the control plane sends it (a NACK).
    node_id = f"second-{uuid.uuid4().hex[:6]}"
    bootstrap = render_bootstrap(
        node_id,
        [XdsAddress("127.0.0.1", int(mesh.env["TURNOUT_XDS_PORT"]))],
        admin_port=free_port(),
    )
    (tmp_path / "envoy.yaml").write_text(dump_bootstrap(bootstrap))
    with (tmp_path / "envoy.log").open("w") as log:
        envoy = subprocess.Popen(
            [envoy_binary(), "-c", str(tmp_path / "envoy.yaml"), *ENVOY_FLAGS],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            sign_in(page, mesh)
            page.get_by_role("link", name="Proxies").click()
            card = page.locator(f"section[data-node='{node_id}']")
            expect(card.locator(".badge.NACKED")).to_be_visible(timeout=30_000)
            expect(card.locator(".nack")).to_contain_text(mesh.env["TURNOUT_LISTENER_PORT"])
            shoot(page, screenshots, "proxies")
            narrow(page, screenshots, "proxies-narrow")
        finally:
            envoy.terminate()
            envoy.wait(timeout=30)
