"""The Grafana dashboard under deploy/ is a dashboard Grafana can load, every
series it queries is on a running replica's /metrics (the control plane's own
and the data plane's), and every series the replica exports is on it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "turnout-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# Sample names by metric type: what a family of each type puts on /metrics.
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
}
_SERIES = re.compile(r"\bturnout_[a-zA-Z0-9_:]*")


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _graphs(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def _queried(dashboard: dict[str, Any]) -> set[str]:
    names = {
        name
        for panel in _graphs(dashboard)
        for target in panel["targets"]
        for name in _SERIES.findall(target["expr"])
    }
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            names |= set(_SERIES.findall(variable["query"]["query"]))
    return names


def test_the_dashboard_is_a_grafana_dashboard_of_prometheus_queries() -> None:
    dashboard = _dashboard()
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["model"]["type"] == "query"
    assert variables["model"]["datasource"] == DATASOURCE

    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows[0] == "Per-version traffic"
    assert {"Batching", "Proxy sync", "Control plane"} <= set(rows)
    for panel in _graphs(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert _SERIES.search(target["expr"]), (panel["title"], target["expr"])
            # Brackets balance: a query Prometheus would at least parse that far.
            for opening, closing in ("()", "{}", "[]"):
                assert target["expr"].count(opening) == target["expr"].count(closing)
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    # Per-version panels follow the model variable.
    traffic = [p for p in _graphs(dashboard) if p["gridPos"]["y"] < 25]
    assert all('model=~"$model"' in t["expr"] for p in traffic[:3] for t in p["targets"])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_every_series_the_dashboard_queries_is_exported(
    anonymous_api: httpx.AsyncClient,
) -> None:
    response = await anonymous_api.get("/metrics")
    assert response.status_code == 200
    exported = {
        family.name + suffix
        for family in text_string_to_metric_families(response.text)
        for suffix in _SUFFIXES.get(family.type, ("",))
    }
    queried = _queried(_dashboard())

    assert queried - exported == set()
    # Every family is on the dashboard: nothing exported goes unseen.
    for family in text_string_to_metric_families(response.text):
        if family.name.endswith("_created"):
            continue  # the text format's creation times of counters and histograms
        names = {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
        assert names & queried, family.name
