"""Tenants -> Envoy config: who may call a protected model, and how often.

Envoy checks every request itself; the control plane is not on the request path.

1. ``jwt_authn`` verifies the ``Authorization: Bearer`` token (from that header
   only, never a query parameter) against the
   public JWKS inlined in the listener (``local_jwks``), checks ``iss`` and
   ``aud``, strips the token before the request goes upstream (``forward`` is
   off) and puts the verified payload in dynamic metadata. Only the routes of
   protected models name the requirement, so open models never ask for a token.
   https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/jwt_authn/v3/config.proto
2. ``rbac``, enforced per route (``RBACPerRoute``), allows a request to a
   protected model when the token's ``sub`` (from that metadata, which a client
   cannot set) is a tenant granted the model and its ``jti`` is not revoked.
   The listener-level RBAC config has no rules, so other routes pass.
   https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/rbac/v3/rbac.proto
3. ``local_ratelimit`` builds a descriptor ``tenant=<sub>`` from the same
   metadata and takes a token from that tenant's bucket; requests without a
   verified token build no descriptor and are not limited.
   https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto

They run after the body-routing filters: an OpenAI call naming a protected
model in its body is re-routed (the Lua step clears the route cache) before
they look up their per-route config, so it is checked like any other call.
``GET /v1/models`` asks for an optional credential (requirement ``listing``,
controlplane.xds.listing). 401, 403 and 429 replies get JSON bodies like every
other local reply (controlplane.xds.replies).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import metadata_pb2 as metadata_matcher_pb2
from envoy.type.matcher.v3 import string_pb2, value_pb2
from envoy.type.metadata.v3 import metadata_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2
from google.protobuf import any_pb2, duration_pb2, empty_pb2, wrappers_pb2

from controlplane.domain.credentials import AUDIENCE, ISSUER
from controlplane.domain.state import DesiredState, TenantSpec
from controlplane.xds.resources import to_any

__all__ = [
    "JWT_FILTER",
    "LISTING_REQUIREMENT",
    "PAYLOAD_KEY",
    "RATE_LIMIT_FILTER",
    "RBAC_FILTER",
    "ModelAccess",
    "access_of",
    "model_access_config",
    "tenancy_filters",
]

JWT_FILTER = "envoy.filters.http.jwt_authn"
RBAC_FILTER = "envoy.filters.http.rbac"
RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
PROVIDER = "turnout"
REQUIREMENT = "tenant"
# GET /v1/models: a credential is optional (SDKs send some key even to open models, so
# one that fails counts as none), and a verified one re-routes the request.
LISTING_PROVIDER = "turnout-listing"
LISTING_REQUIREMENT = "listing"
PAYLOAD_KEY = "jwt_payload"
DESCRIPTOR_KEY = "tenant"


@dataclass(frozen=True, slots=True)
class ModelAccess:
    """Who may call one protected model: the granted tenants' subjects, and the
    revoked credential ids (``jti``) of those tenants."""

    subjects: tuple[str, ...]
    revoked: tuple[str, ...]


def access_of(state: DesiredState) -> dict[str, ModelAccess]:
    """Return the access rule of every protected model of ``state``, by model name."""
    granted: dict[str, list[TenantSpec]] = {}
    for tenant in state.tenants:
        for model in tenant.models:
            granted.setdefault(model, []).append(tenant)
    return {
        model: ModelAccess(
            subjects=tuple(sorted(t.subject for t in tenants)),
            revoked=tuple(sorted(jti for t in tenants for jti in t.revoked)),
        )
        for model, tenants in granted.items()
    }


def tenancy_filters(tenants: Iterable[TenantSpec], jwks: str | None) -> list[hcm_pb2.HttpFilter]:
    """Return the JWT, RBAC and rate-limit filters (in that order), or none before
    the first tenant exists (no ``jwks``)."""
    if jwks is None:
        return []
    return [
        hcm_pb2.HttpFilter(name=JWT_FILTER, typed_config=to_any(_jwt_authentication(jwks))),
        # No rules: allow everything unless a route's RBACPerRoute says otherwise.
        hcm_pb2.HttpFilter(name=RBAC_FILTER, typed_config=to_any(rbac_pb2.RBAC())),
        hcm_pb2.HttpFilter(name=RATE_LIMIT_FILTER, typed_config=to_any(_rate_limit(tenants))),
    ]


def model_access_config(access: ModelAccess) -> dict[str, any_pb2.Any]:
    """Return the ``typed_per_filter_config`` of every route of a protected model."""
    return {
        JWT_FILTER: to_any(jwt_pb2.PerRouteConfig(requirement_name=REQUIREMENT)),
        RBAC_FILTER: to_any(rbac_pb2.RBACPerRoute(rbac=rbac_pb2.RBAC(rules=_rules(access)))),
    }


def _jwt_authentication(jwks: str) -> jwt_pb2.JwtAuthentication:
    provider = jwt_pb2.JwtProvider(
        issuer=ISSUER,
        # Only here: without it Envoy also takes ?access_token=, which ends up in
        # access logs and browser histories.
        # https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/jwt_authn/v3/config.proto#envoy-v3-api-field-extensions-filters-http-jwt-authn-v3-jwtprovider-from-headers
        from_headers=[jwt_pb2.JwtHeader(name="Authorization", value_prefix="Bearer ")],
        audiences=[AUDIENCE],
        local_jwks=base_pb2.DataSource(inline_string=jwks),
        payload_in_metadata=PAYLOAD_KEY,
        forward=False,
    )
    listing = jwt_pb2.JwtProvider()
    listing.CopyFrom(provider)
    listing.clear_route_cache = True
    return jwt_pb2.JwtAuthentication(
        providers={PROVIDER: provider, LISTING_PROVIDER: listing},
        requirement_map={
            REQUIREMENT: jwt_pb2.JwtRequirement(provider_name=PROVIDER),
            LISTING_REQUIREMENT: jwt_pb2.JwtRequirement(
                requires_any=jwt_pb2.JwtRequirementOrList(
                    requirements=[
                        jwt_pb2.JwtRequirement(provider_name=LISTING_PROVIDER),
                        jwt_pb2.JwtRequirement(allow_missing_or_failed=empty_pb2.Empty()),
                    ]
                )
            ),
        },
    )


def _claim(name: str, value: str) -> rbac_config_pb2.Principal:
    return rbac_config_pb2.Principal(
        metadata=metadata_matcher_pb2.MetadataMatcher(
            filter=JWT_FILTER,
            path=[
                metadata_matcher_pb2.MetadataMatcher.PathSegment(key=PAYLOAD_KEY),
                metadata_matcher_pb2.MetadataMatcher.PathSegment(key=name),
            ],
            value=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=value)),
        )
    )


def _any_of(principals: Iterable[rbac_config_pb2.Principal]) -> rbac_config_pb2.Principal:
    return rbac_config_pb2.Principal(or_ids=rbac_config_pb2.Principal.Set(ids=list(principals)))


def _rules(access: ModelAccess) -> rbac_config_pb2.RBAC:
    required = [_any_of(_claim("sub", subject) for subject in access.subjects)]
    if access.revoked:
        required.append(
            rbac_config_pb2.Principal(not_id=_any_of(_claim("jti", jti) for jti in access.revoked))
        )
    return rbac_config_pb2.RBAC(
        action=rbac_config_pb2.RBAC.ALLOW,
        policies={
            "granted-tenants": rbac_config_pb2.Policy(
                permissions=[rbac_config_pb2.Permission(any=True)],
                principals=[
                    rbac_config_pb2.Principal(and_ids=rbac_config_pb2.Principal.Set(ids=required))
                ],
            )
        },
    )


def _rate_limit(tenants: Iterable[TenantSpec]) -> local_rate_limit_pb2.LocalRateLimit:
    always = base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(
            numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED
        ),
        runtime_key="turnout.tenant_rate_limit",
    )
    sub = metadata_pb2.MetadataKey(
        key=JWT_FILTER,
        path=[
            metadata_pb2.MetadataKey.PathSegment(key=PAYLOAD_KEY),
            metadata_pb2.MetadataKey.PathSegment(key="sub"),
        ],
    )
    return local_rate_limit_pb2.LocalRateLimit(
        stat_prefix="tenant_rate_limit",
        filter_enabled=always,
        filter_enforced=always,
        rate_limits=[
            route_components_pb2.RateLimit(
                actions=[
                    route_components_pb2.RateLimit.Action(
                        metadata=route_components_pb2.RateLimit.Action.MetaData(
                            descriptor_key=DESCRIPTOR_KEY,
                            metadata_key=sub,
                            source=route_components_pb2.RateLimit.Action.MetaData.DYNAMIC,
                        )
                    )
                ]
            )
        ],
        # One bucket per tenant: a descriptor per subject.
        descriptors=[
            ratelimit_pb2.LocalRateLimitDescriptor(
                entries=[
                    ratelimit_pb2.RateLimitDescriptor.Entry(
                        key=DESCRIPTOR_KEY, value=tenant.subject
                    )
                ],
                token_bucket=token_bucket_pb2.TokenBucket(
                    max_tokens=tenant.burst,
                    tokens_per_fill=wrappers_pb2.UInt32Value(value=tenant.requests_per_second),
                    fill_interval=duration_pb2.Duration(seconds=1),
                ),
            )
            for tenant in tenants
        ],
    )
