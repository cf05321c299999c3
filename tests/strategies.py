"""Hypothesis strategies for desired states, as the database gives them back.

``desired_states()`` draws a valid :class:`DesiredState`: what the admin API
accepts (names, labels, header names and every policy range of
``controlplane/api/policy_schemas.py``, and the model rules of
``check_model_policy``) and what the tables can hold (unique endpoints per
version, unique subjects and credential ids, weights that add up to 100 over
a model's versions). Values come out exactly as ``load_state``
returns them: models, versions and tenants sorted by name, endpoints by
(address, port), weights only where above 0 and in version order, a tenant's
models and revoked credential ids sorted, floats as floats, IP literals in
their normal form. Sizes stay small (at most 4 models) so examples are fast.
"""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Sequence

from hypothesis import strategies as st

from controlplane.domain.credentials import ALGORITHM, jwks_of
from controlplane.domain.policy import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REQUEST_TIMEOUT_MS,
    MAX_REQUEST_BYTES_LIMIT,
    RETRY_ON,
    Batching,
    CircuitBreakers,
    Experiment,
    HealthCheck,
    LoadBalancing,
    ModelPolicy,
    OutlierDetection,
    Retries,
    Shadow,
    Sticky,
    Timeouts,
    VersionPolicy,
    check_model_policy,
)
from controlplane.domain.state import (
    DesiredState,
    EndpointSpec,
    KubernetesRef,
    ModelSpec,
    TenantSpec,
    VersionSpec,
)

__all__ = [
    "TEST_JWKS",
    "desired_states",
    "endpoints",
    "kubernetes_refs",
    "model_policies",
    "names",
    "version_policies",
]

# A fixed P-256 public key (RFC 7515 appendix A.3): translation only inlines it.
TEST_JWKS = jwks_of(
    [
        {
            "kty": "EC",
            "crv": "P-256",
            "alg": ALGORITHM,
            "use": "sig",
            "kid": "turnout-test",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        }
    ]
)
assert TEST_JWKS is not None

MAX_MODELS = 4
MAX_VERSIONS = 3
MAX_ENDPOINTS = 3
MAX_TENANTS = 3

_ALNUM = string.ascii_letters + string.digits
_LOWER_ALNUM = string.ascii_lowercase + string.digits
_MILLIS = st.integers(1, 86_400_000)
_COUNT = st.integers(1, 1_000_000)


def _text(first: str, rest: str, max_rest: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda head, tail: head + tail,
        st.sampled_from(first),
        st.text(rest, max_size=max_rest),
    )


def names() -> st.SearchStrategy[str]:
    """Model, version and tenant names (the API's ``Name``), short."""
    return st.sampled_from(["chat", "embed", "v1", "v2", "a.b", "A-1"]) | _text(
        _ALNUM, _ALNUM + "._-", 7
    )


def _labels() -> st.SearchStrategy[str]:
    """Zones and accelerators (the API's ``Label``): a few common ones collide often."""
    return st.sampled_from(["us-east-1a", "us-east-1b", "eu-west-1a", "h100", "a100"]) | _text(
        _ALNUM, _ALNUM + "._-", 7
    )


def _header_names() -> st.SearchStrategy[str]:
    """Lower-case header names that are not Envoy's own (``x-envoy-*``)."""
    return (
        st.sampled_from(["x-user", "x-tenant", "x-arm", "cookie"])
        | _text(_LOWER_ALNUM, _LOWER_ALNUM + "-", 10)
    ).filter(lambda header: not header.startswith("x-envoy-"))


def _percent() -> st.SearchStrategy[float]:
    """A share in (0, 100]."""
    return st.floats(0, 100, exclude_min=True, allow_nan=False)


def _addresses() -> st.SearchStrategy[str]:
    """IPv4 and IPv6 literals and DNS names, in the normal form the API stores."""
    literals = st.one_of(
        st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.12", "::1", "fd00::2"]),
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
    ).map(lambda address: str(ipaddress.ip_address(address)))
    names = st.sampled_from(["localhost", "sentiment-v2.ml.svc.cluster.local", "model-a"])
    return st.one_of(literals, literals, literals, names)


def _ports() -> st.SearchStrategy[int]:
    return st.sampled_from([8000, 8001, 9000]) | st.integers(1, 65535)


def endpoints() -> st.SearchStrategy[EndpointSpec]:
    """One replica: address, port, zone, accelerator, weight and batcher port."""
    return st.builds(
        EndpointSpec,
        address=_addresses(),
        port=_ports(),
        zone=st.none() | _labels(),
        accelerator=st.none() | _labels(),
        weight=st.sampled_from([1, 1, 3]) | st.integers(1, 128),
        batcher_port=st.none() | _ports(),
    )


def version_policies() -> st.SearchStrategy[VersionPolicy]:
    """Every version policy field, each set or not, within the API's ranges."""
    breakers = st.builds(
        CircuitBreakers,
        max_connections=st.none() | _COUNT,
        max_pending_requests=st.none() | _COUNT,
        max_requests=st.none() | _COUNT,
        max_retries=st.none() | _COUNT,
    )
    outlier = st.builds(
        OutlierDetection,
        consecutive_5xx=st.integers(1, 1000),
        interval_ms=_MILLIS,
        base_ejection_time_ms=_MILLIS,
        max_ejection_percent=st.integers(0, 100),
    )
    health = st.builds(
        HealthCheck,
        path=st.builds(lambda rest: "/" + rest, st.text(string.printable[:94], max_size=12)),
        interval_ms=_MILLIS,
        timeout_ms=_MILLIS,
        healthy_threshold=st.integers(1, 100),
        unhealthy_threshold=st.integers(1, 100),
    )
    balancing = st.just(LoadBalancing()) | st.builds(
        LoadBalancing, policy=st.just("ring_hash"), hash_header=_header_names()
    )
    batching = st.builds(
        Batching,
        enabled=st.booleans(),
        max_batch_size=st.integers(1, 4096),
        max_queue_delay_ms=st.floats(0, 60_000, allow_nan=False),
        max_queue=st.integers(1, 1_000_000),
        slo_ms=st.floats(1, 3_600_000, allow_nan=False),
    )
    return st.builds(
        VersionPolicy,
        circuit_breakers=st.none() | breakers,
        outlier_detection=st.none() | outlier,
        health_check=st.none() | health,
        load_balancing=st.none() | balancing,
        batching=st.none() | batching,
        served_model_name=st.none()
        | st.sampled_from(["meta-llama/Llama-3.1-8B-Instruct", "chat", "org/m:v2"])
        | _text(_ALNUM, _ALNUM + "._:/@+-", 12),
    )


@st.composite
def _retries(draw: st.DrawFn, request_timeout_ms: int) -> Retries:
    retry_on = tuple(draw(st.lists(st.sampled_from(RETRY_ON), min_size=1, unique=True)))
    status_codes: tuple[int, ...] = ()
    if "retriable-status-codes" in retry_on:
        status_codes = tuple(draw(st.lists(st.integers(100, 599), max_size=3)))
    backoff_base = draw(st.none() | _MILLIS)
    backoff_max = None
    if backoff_base is not None:
        backoff_max = draw(st.none() | st.integers(backoff_base, 86_400_000))
    budget = draw(st.none() | _percent())
    return Retries(
        retry_on=retry_on,
        num_retries=draw(st.integers(0, 10)),
        # A try never outlives the request (check_model_policy).
        per_try_timeout_ms=draw(st.none() | st.integers(1, request_timeout_ms)),
        retriable_status_codes=status_codes,
        backoff_base_ms=backoff_base,
        backoff_max_ms=backoff_max,
        budget_percent=budget,
        budget_min_concurrency=None if budget is None else draw(st.none() | _COUNT),
    )


@st.composite
def model_policies(draw: st.DrawFn, versions: Sequence[str] = ()) -> ModelPolicy:
    """Every model policy field, valid for a model with ``versions``: the shadow
    and the experiments name existing versions, no two experiments match the
    same header value, and a try never outlives the request."""
    timeouts = draw(
        st.none()
        | st.builds(
            Timeouts,
            request_timeout_ms=st.none() | _MILLIS,
            idle_timeout_ms=st.none() | _MILLIS,
            stream_idle_timeout_ms=st.none() | _MILLIS,
        )
    )
    request_timeout_ms = DEFAULT_REQUEST_TIMEOUT_MS
    if timeouts is not None and timeouts.request_timeout_ms is not None:
        request_timeout_ms = timeouts.request_timeout_ms
    shadow = None
    experiments: tuple[Experiment, ...] = ()
    if versions:
        version = st.sampled_from(list(versions))
        shadow = draw(st.none() | st.builds(Shadow, version=version, percent=_percent()))
        experiments = tuple(
            draw(
                st.lists(
                    st.builds(
                        Experiment,
                        header=_header_names(),
                        value=st.sampled_from(["a", "b"])
                        # A value a request can carry: visible ASCII (the API's rule).
                        | st.text(
                            st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                            min_size=1,
                            max_size=8,
                        ),
                        version=version,
                    ),
                    max_size=3,
                    unique_by=lambda e: (e.header.lower(), e.value),
                )
            )
        )
    policy = ModelPolicy(
        timeouts=timeouts,
        retries=draw(st.none() | _retries(request_timeout_ms)),
        shadow=shadow,
        experiments=experiments,
        sticky=draw(st.none() | st.builds(Sticky, header=_header_names())),
        # The default itself (no per-route override) and limits on both sides of it.
        max_request_bytes=draw(
            st.none()
            | st.sampled_from([DEFAULT_MAX_REQUEST_BYTES, 4096, MAX_REQUEST_BYTES_LIMIT])
            | st.integers(1, MAX_REQUEST_BYTES_LIMIT)
        ),
    )
    check_model_policy(policy, "generated", versions)
    return policy


@st.composite
def _weights(draw: st.DrawFn, versions: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """Weights over ``versions`` that add up to 100, as loaded: only those above 0,
    in version order."""
    if not versions:
        return ()
    cuts = sorted(draw(st.lists(st.integers(0, 100), max_size=len(versions) - 1)))
    shares = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
    shares += [0] * (len(versions) - len(shares))
    shares = draw(st.permutations(shares))
    return tuple((name, weight) for name, weight in zip(versions, shares, strict=True) if weight)


def kubernetes_refs() -> st.SearchStrategy[KubernetesRef]:
    """A reference to a Kubernetes Service, as the admin API accepts it."""
    label = st.from_regex(r"\A[a-z]([-a-z0-9]{0,8}[a-z0-9])?\Z")
    port_name = st.from_regex(r"\A[a-z]([-a-z0-9]{0,6}[a-z0-9])?\Z")
    return st.builds(
        KubernetesRef,
        namespace=label,
        service=label,
        port=port_name | st.integers(1, 65535),
    )


@st.composite
def _models(draw: st.DrawFn, name: str) -> ModelSpec:
    version_names = sorted(draw(st.sets(names(), max_size=MAX_VERSIONS)))
    versions = []
    for version in version_names:
        replicas = draw(
            st.lists(
                endpoints(),
                max_size=MAX_ENDPOINTS,
                unique_by=lambda e: (e.address, e.port),
            )
        )
        # A version lists its endpoints or names a Kubernetes Service, never both.
        ref = draw(st.none() | kubernetes_refs())
        versions.append(
            VersionSpec(
                name=version,
                endpoints=()
                if ref is not None
                else tuple(sorted(replicas, key=lambda e: (e.address, e.port))),
                policy=draw(version_policies()),
                kubernetes=ref,
            )
        )
    return ModelSpec(
        name=name,
        protocol=draw(st.sampled_from(["openai", "kserve-v2", "http"])),
        versions=tuple(versions),
        weights=draw(_weights(version_names)),
        policy=draw(model_policies(version_names)),
    )


def _hex(size: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=size, max_size=size).map(bytes.hex)


@st.composite
def _tenants(draw: st.DrawFn, models: Sequence[str]) -> tuple[TenantSpec, ...]:
    tenant_names = sorted(draw(st.sets(names(), max_size=MAX_TENANTS)))
    subjects = draw(
        st.lists(
            _hex(12).map(lambda h: f"tn_{h}"),
            min_size=len(tenant_names),
            max_size=len(tenant_names),
            unique=True,
        )
    )
    # A credential id (jti) is unique across every tenant.
    jtis = draw(st.lists(_hex(16), max_size=2 * len(tenant_names), unique=True))
    owners = [draw(st.integers(0, len(tenant_names) - 1)) for _ in jtis] if tenant_names else []
    grants = st.sets(st.sampled_from(list(models))) if models else st.just(set[str]())
    return tuple(
        TenantSpec(
            name=name,
            subject=subject,
            models=tuple(sorted(draw(grants))),
            requests_per_second=draw(st.sampled_from([1, 10]) | _COUNT),
            burst=draw(st.sampled_from([1, 20]) | _COUNT),
            revoked=tuple(
                sorted(jti for jti, owner in zip(jtis, owners, strict=True) if owner == i)
            ),
        )
        for i, (name, subject) in enumerate(zip(tenant_names, subjects, strict=True))
    )


@st.composite
def desired_states(draw: st.DrawFn) -> DesiredState:
    """A valid desired state, exactly as ``load_state`` would return it."""
    model_names = sorted(draw(st.sets(names(), max_size=MAX_MODELS)))
    models = tuple(draw(_models(name)) for name in model_names)
    tenants = draw(_tenants(model_names))
    # The signing key outlives the tenants: with none left, the key set may remain.
    jwks = TEST_JWKS if tenants else draw(st.sampled_from([None, TEST_JWKS]))
    return DesiredState(
        revision=draw(st.integers(1, 10_000)),
        models=models,
        tenants=tenants,
        jwks=jwks,
    )
