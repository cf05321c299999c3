"""The access log's configuration: what access_logs() renders, that Envoy takes it,
and that docs/observability.md documents every field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from controlplane.domain.state import DesiredState, EndpointSpec, ModelSpec, VersionSpec
from controlplane.xds.access_log import ACCESS_LOG_FORMAT, access_logs
from controlplane.xds.resources import CLUSTER, LISTENER, ROUTE
from controlplane.xds.translate import LISTENER_NAME, ListenerOptions, translate
from tests.envoy_validate import envoy_validate

ROOT = Path(__file__).resolve().parents[2]


def _state() -> DesiredState:
    versions = tuple(
        VersionSpec(name, (EndpointSpec("127.0.0.1", 9000 + i),))
        for i, name in enumerate(("v1", "v2"))
    )
    model = ModelSpec("sentiment", "http", versions, (("v1", 90), ("v2", 10)))
    return DesiredState(revision=1, models=(model,))


def _manager(options: ListenerOptions) -> hcm_pb2.HttpConnectionManager:
    listener = translate(_state(), options)[LISTENER][LISTENER_NAME]
    assert isinstance(listener, listener_pb2.Listener)
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


@pytest.mark.parametrize("path", [None, ""])
def test_no_path_means_no_access_log(path: str | None) -> None:
    assert access_logs(path) == []
    # Only the stats access logger (the traffic window's), no file logger.
    loggers = _manager(ListenerOptions(access_log_path=path)).access_log
    assert [logger.name for logger in loggers] == ["envoy.access_loggers.stats"]


def test_one_file_logger_writes_the_documented_json_fields() -> None:
    (logger,) = access_logs("/var/log/envoy/access.log")
    assert logger.name == "envoy.access_loggers.file"
    config = file_pb2.FileAccessLog()
    assert logger.typed_config.Unpack(config)
    assert config.path == "/var/log/envoy/access.log"
    fields = json_format.MessageToDict(config.log_format.json_format)
    assert fields == ACCESS_LOG_FORMAT
    # The query string (which may carry a key) and credential headers stay out.
    assert fields["path"] == "%PATH(NQ:ORIG_OR_PATH)%"
    operators = " ".join(fields.values()).upper()
    for never in ("AUTHORIZATION", "X-API-KEY", "COOKIE", "%REQ(:PATH)%", "BODY"):
        assert never not in operators


def test_the_listener_carries_the_logger_of_its_options() -> None:
    manager = _manager(ListenerOptions(access_log_path="/dev/stdout"))
    assert list(manager.access_log)[1:] == access_logs("/dev/stdout")


def test_routes_name_their_model_and_clusters_their_version() -> None:
    resources = translate(_state())
    for name, cluster in resources[CLUSTER].items():
        fields = json_format.MessageToDict(cluster)["metadata"]["filterMetadata"]["turnout"]
        assert f"{fields['model']}/{fields['version']}" == name
    routes = json_format.MessageToDict(resources[ROUTE]["turnout_routes"])
    for route in routes["virtualHosts"][0]["routes"]:
        model = route.get("metadata", {}).get("filterMetadata", {}).get("turnout", {})
        # Every route of a model names it; the routes of no model (listing, 404) do not.
        assert model.get("model") == ("sentiment" if "sentiment" in route["name"] else None)


def test_envoy_accepts_the_access_log(tmp_path: Path) -> None:
    options = ListenerOptions(access_log_path=str(tmp_path / "access.log"))
    envoy_validate(translate(_state(), options), tmp_path)


def test_every_field_is_documented() -> None:
    docs = (ROOT / "docs" / "observability.md").read_text()
    # From its heading to the next section's.
    section = docs[docs.index("## Access logs") :].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert documented == list(ACCESS_LOG_FORMAT)
