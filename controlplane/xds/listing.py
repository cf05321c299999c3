"""``GET /v1/models`` through Envoy: the models a caller may use, in OpenAI's list format.

Envoy answers it itself with direct responses, one per tenant and one for
callers without a credential; the control plane is not on the request path.

- Without tenants (no key set), one route lists every model.
- With tenants, the anonymous route lists the open models (those no tenant is
  granted) and asks ``jwt_authn`` for an optional credential (requirement
  ``listing``: a missing or failing token counts as none, since the OpenAI
  SDKs send some key even to open models). That requirement's
  provider clears the route cache once the token is verified, so Envoy
  matches the request again, now with the token's payload in dynamic metadata:
  a tenant's route (its ``sub``, and a ``jti`` not revoked) lists the open
  models and the ones granted to it.
  https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/jwt_authn/v3/config.proto#envoy-v3-api-field-extensions-filters-http-jwt-authn-v3-jwtprovider-clear-route-cache

Each model is listed by its name and, for pinning a version, as ``name:version``.
``created`` is 0: translation is a pure function of the state, and the state
has no creation times.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.type.matcher.v3 import metadata_pb2 as metadata_matcher_pb2
from envoy.type.matcher.v3 import string_pb2, value_pb2

from controlplane.domain.state import DesiredState, TenantSpec
from controlplane.xds.resources import to_any
from controlplane.xds.tenancy import JWT_FILTER, LISTING_REQUIREMENT, PAYLOAD_KEY

__all__ = ["LISTING_PATH", "Catalog", "catalog_of", "listing_routes"]

LISTING_PATH = "/v1/models"


@dataclass(frozen=True, slots=True)
class Catalog:
    """What the listing depends on: every model's name and version names, the
    tenants, and whether credentials exist at all (a key set)."""

    models: tuple[tuple[str, tuple[str, ...]], ...]
    tenants: tuple[TenantSpec, ...]
    authenticated: bool


def catalog_of(state: DesiredState) -> Catalog:
    """Return the part of ``state`` that ``GET /v1/models`` lists."""
    return Catalog(
        models=tuple((m.name, tuple(v.name for v in m.versions)) for m in state.models),
        tenants=state.tenants,
        authenticated=state.jwks is not None,
    )


def listing_routes(catalog: Catalog) -> list[route_components_pb2.Route]:
    """Return the routes of ``GET /v1/models``: each tenant's, then the anonymous one."""
    if not catalog.authenticated:
        return [_route("models-list", _listing(catalog, None), [])]
    granted = {model for tenant in catalog.tenants for model in tenant.models}
    open_models = {name for name, _ in catalog.models} - granted
    routes = [
        _route(
            f"models-list/{tenant.name}",
            _listing(catalog, open_models | set(tenant.models)),
            _tenant_matchers(tenant),
        )
        for tenant in catalog.tenants
    ]
    anonymous = _route("models-list", _listing(catalog, open_models), [])
    anonymous.typed_per_filter_config[JWT_FILTER].CopyFrom(
        to_any(jwt_pb2.PerRouteConfig(requirement_name=LISTING_REQUIREMENT))
    )
    return [*routes, anonymous]


def _listing(catalog: Catalog, allowed: Iterable[str] | None) -> str:
    names = None if allowed is None else set(allowed)
    data = [
        {"id": model_id, "object": "model", "created": 0, "owned_by": "turnout"}
        for name, versions in catalog.models
        if names is None or name in names
        for model_id in (name, *(f"{name}:{version}" for version in versions))
    ]
    return json.dumps({"object": "list", "data": data})


def _claim(name: str, value: str, invert: bool = False) -> metadata_matcher_pb2.MetadataMatcher:
    return metadata_matcher_pb2.MetadataMatcher(
        filter=JWT_FILTER,
        path=[
            metadata_matcher_pb2.MetadataMatcher.PathSegment(key=PAYLOAD_KEY),
            metadata_matcher_pb2.MetadataMatcher.PathSegment(key=name),
        ],
        value=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=value)),
        invert=invert,
    )


def _tenant_matchers(tenant: TenantSpec) -> list[metadata_matcher_pb2.MetadataMatcher]:
    return [
        _claim("sub", tenant.subject),
        *(_claim("jti", jti, invert=True) for jti in tenant.revoked),
    ]


def _route(
    name: str, body: str, metadata: list[metadata_matcher_pb2.MetadataMatcher]
) -> route_components_pb2.Route:
    return route_components_pb2.Route(
        name=name,
        match=route_components_pb2.RouteMatch(
            path=LISTING_PATH,
            headers=[
                route_components_pb2.HeaderMatcher(
                    name=":method", string_match=string_pb2.StringMatcher(exact="GET")
                )
            ],
            dynamic_metadata=metadata,
        ),
        direct_response=route_components_pb2.DirectResponseAction(
            status=200, body=base_pb2.DataSource(inline_string=body)
        ),
        response_headers_to_add=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="content-type", value="application/json"),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ],
    )
