"""Tenants in the desired state and in Envoy's config: pure functions, plus one
``envoy --mode validate`` of the rendered resources."""

from __future__ import annotations

from pathlib import Path

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from controlplane.domain.credentials import generate_signing_key, jwks_of
from controlplane.domain.documents import decode_state, encode_state
from controlplane.domain.state import (
    DesiredState,
    EndpointSpec,
    ModelSpec,
    TenantSpec,
    VersionSpec,
)
from controlplane.xds.resources import LISTENER, ROUTE
from controlplane.xds.shadow import SHADOW_FILTER
from controlplane.xds.tenancy import JWT_FILTER, RBAC_FILTER
from controlplane.xds.translate import LISTENER_NAME, ROUTE_CONFIG_NAME, translate
from tests.envoy_validate import envoy_validate


def _model(name: str) -> ModelSpec:
    version = VersionSpec("v1", (EndpointSpec("127.0.0.1", 9000),))
    return ModelSpec(name=name, protocol="http", versions=(version,), weights=(("v1", 100),))


def _state() -> DesiredState:
    key = generate_signing_key()
    tenants = (
        TenantSpec("acme", "tn_a", ("secret",), 5, 10, ("jti-1",)),
        TenantSpec("globex", "tn_g", (), 1, 1),
    )
    return DesiredState(3, (_model("open"), _model("secret")), tenants, jwks_of([key.public_jwk]))


def _filters(resources: dict[str, dict[str, object]]) -> list[str]:
    listener = resources[LISTENER][LISTENER_NAME]
    assert isinstance(listener, listener_pb2.Listener)
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return [f.name for f in manager.http_filters]


def test_documents_round_trip_and_old_documents_load() -> None:
    state = _state()
    assert decode_state(encode_state(state)) == state
    old = encode_state(DesiredState(1, (_model("m"),)))
    del old["tenants"], old["jwks"]
    loaded = decode_state(old)
    assert loaded.tenants == () and loaded.jwks is None


def test_only_granted_models_check_credentials() -> None:
    resources = translate(_state())
    assert _filters(resources)[-5:] == [
        JWT_FILTER,
        RBAC_FILTER,
        "envoy.filters.http.local_ratelimit",
        # After the checks: a refused request is neither mirrored nor compared.
        SHADOW_FILTER,
        "envoy.filters.http.router",
    ]
    routes = resources[ROUTE][ROUTE_CONFIG_NAME]
    assert isinstance(routes, route_pb2.RouteConfiguration)
    for route in routes.virtual_hosts[0].routes:
        checked = JWT_FILTER in route.typed_per_filter_config
        # The model list asks for an optional credential (controlplane.xds.listing).
        expected = route.name.startswith("secret/") or route.name == "models-list"
        assert checked == expected, route.name


def test_without_tenants_the_listener_is_unchanged() -> None:
    plain = DesiredState(1, (_model("open"),))
    assert JWT_FILTER not in _filters(translate(plain))
    assert "jti-1" not in str(translate(plain))


def test_envoy_accepts_the_config(tmp_path: Path) -> None:
    envoy_validate(translate(_state()), tmp_path)
