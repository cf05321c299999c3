"""Traffic policies: immutable values that the translator turns into Envoy config.

A model's policy shapes how its requests are routed (timeouts, retries,
shadow traffic, experiments, sticky arms); a version's policy shapes how its
replicas are treated (circuit breakers, outlier detection, health checks,
load balancing). Every field that is None (or empty) means "Envoy's behaviour
as Turnout configures it without a policy", so an empty policy changes nothing.

Each policy round-trips through JSON-compatible documents (stored in the
database and with each config revision): ``*_from_document(asdict(policy))``
gives the policy back.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from controlplane.domain.errors import InvalidInput

__all__ = [
    "BATCHING_RANGES",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_REQUEST_TIMEOUT_MS",
    "DEFAULT_RETRY_ON",
    "DEFAULT_SHADOW_COMPARE_PERCENT",
    "DEFAULT_SHADOW_MAX_BODY_BYTES",
    "DEFAULT_STREAM_IDLE_TIMEOUT_MS",
    "MAX_REQUEST_BYTES_LIMIT",
    "RETRY_ON",
    "SHADOW_MAX_BODY_BYTES_LIMIT",
    "Batching",
    "CircuitBreakers",
    "Experiment",
    "HealthCheck",
    "LoadBalancing",
    "ModelPolicy",
    "OutlierDetection",
    "Retries",
    "Shadow",
    "Sticky",
    "Timeouts",
    "VersionPolicy",
    "check_model_policy",
    "model_policy_from_document",
    "version_policy_from_document",
]

T = TypeVar("T")

DEFAULT_REQUEST_TIMEOUT_MS = 60_000
# A stream (SSE, or a body with "stream": true) has no total bound, only this
# bound on the time between two chunks.
DEFAULT_STREAM_IDLE_TIMEOUT_MS = 60_000
# A model's request bodies are capped at this size (8 MiB: long-context and
# image-bearing chat calls) unless its policy says otherwise (``max_request_bytes``),
# whichever way the request is routed; a larger body gets 413 from Envoy. The
# policy may go up to MAX_REQUEST_BYTES_LIMIT: Envoy buffers a body whole to count it.
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
MAX_REQUEST_BYTES_LIMIT = 1024 * 1024 * 1024
DEFAULT_RETRY_ON = ("5xx", "reset", "connect-failure")

# Envoy's retry conditions for HTTP (x-envoy-retry-on):
# https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter#x-envoy-retry-on
RETRY_ON = (
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-request bounds: the whole request (all retries included) and stream idle
    time; for streamed responses only the time between two chunks
    (``stream_idle_timeout_ms``, default ``DEFAULT_STREAM_IDLE_TIMEOUT_MS``)."""

    request_timeout_ms: int | None = None
    idle_timeout_ms: int | None = None
    stream_idle_timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Retries:
    """When and how often Envoy retries, with backoff and a cluster-wide budget."""

    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    num_retries: int = 1
    per_try_timeout_ms: int | None = None
    retriable_status_codes: tuple[int, ...] = ()
    backoff_base_ms: int | None = None
    backoff_max_ms: int | None = None
    budget_percent: float | None = None
    budget_min_concurrency: int | None = None


# Shadow comparisons (docs/shadow.md): the share of mirrored requests whose two
# answers are compared, and the cap on the bytes of a body that is compared (and
# kept, when the policy allows it). Bodies over the cap are compared by status
# and latency only.
DEFAULT_SHADOW_COMPARE_PERCENT = 10.0
DEFAULT_SHADOW_MAX_BODY_BYTES = 64 * 1024
# Half of Envoy's default per-stream buffer (1 MiB): reading a body this size
# never trips the buffer limit.
SHADOW_MAX_BODY_BYTES_LIMIT = 512 * 1024


@dataclass(frozen=True, slots=True)
class Shadow:
    """Mirror ``percent`` of the model's requests to ``version``; clients never see
    its answers. ``compare_percent`` of the mirrored requests have their two answers
    compared (0: none); their bodies are kept only with ``keep_bodies``, and bodies
    over ``max_body_bytes`` are compared by status and latency only."""

    version: str
    percent: float
    compare_percent: float = DEFAULT_SHADOW_COMPARE_PERCENT
    keep_bodies: bool = False
    max_body_bytes: int = DEFAULT_SHADOW_MAX_BODY_BYTES


@dataclass(frozen=True, slots=True)
class Experiment:
    """Requests whose ``header`` equals ``value`` go to ``version``, ahead of the weights."""

    header: str
    value: str
    version: str


@dataclass(frozen=True, slots=True)
class Sticky:
    """Hash ``header`` (a user id) to pick the version, so each user stays on one arm."""

    header: str


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """How a model's requests are routed."""

    timeouts: Timeouts | None = None
    retries: Retries | None = None
    shadow: Shadow | None = None
    experiments: tuple[Experiment, ...] = ()
    sticky: Sticky | None = None
    max_request_bytes: int | None = None  # None: DEFAULT_MAX_REQUEST_BYTES

    def request_limit(self) -> int:
        """Return the largest request body this model takes, in bytes."""
        return self.max_request_bytes or DEFAULT_MAX_REQUEST_BYTES

    def versions_referenced(self) -> set[str]:
        """Return the versions this policy sends traffic to by name."""
        names = {e.version for e in self.experiments}
        if self.shadow is not None:
            names.add(self.shadow.version)
        return names


@dataclass(frozen=True, slots=True)
class CircuitBreakers:
    """Per-cluster limits; requests over them fail fast with 503 (x-envoy-overloaded)."""

    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Eject replicas that fail in a row, for a growing time."""

    consecutive_5xx: int = 5
    interval_ms: int = 10_000
    base_ejection_time_ms: int = 30_000
    max_ejection_percent: int = 10


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active HTTP health checks of every replica."""

    path: str = "/healthz"
    interval_ms: int = 5_000
    timeout_ms: int = 1_000
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3


@dataclass(frozen=True, slots=True)
class LoadBalancing:
    """``least_request``, or ``ring_hash`` on ``hash_header`` for session affinity."""

    policy: str = "least_request"
    hash_header: str | None = None


# The batching policy's ranges, inclusive: the admin API's schema takes them (and
# ``Batching``'s defaults) from here. The batcher (filters.batcher) may not import
# the control plane and holds its own copy; tests/unit/test_batching_contract.py
# checks that the two agree.
BATCHING_RANGES: Mapping[str, tuple[int, int] | tuple[float, float]] = {
    "max_batch_size": (1, 4096),
    "max_queue_delay_ms": (0.0, 60_000.0),
    "max_queue": (1, 1_000_000),
    "slo_ms": (1.0, 3_600_000.0),
}


@dataclass(frozen=True, slots=True)
class Batching:
    """Send the version's traffic through the batcher beside each replica (the
    endpoints' ``batcher_port``), which coalesces concurrent calls.

    The defaults here are the policy's defaults everywhere (the API, the
    batcher); each number lies in its ``BATCHING_RANGES`` entry.
    """

    enabled: bool = True
    max_batch_size: int = 32
    max_queue_delay_ms: float = 10.0
    max_queue: int = 1024
    slo_ms: float = 1000.0


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """How a version's replicas are treated, and the model name its server expects
    (``served_model_name``; None: the model's own name)."""

    circuit_breakers: CircuitBreakers | None = None
    outlier_detection: OutlierDetection | None = None
    health_check: HealthCheck | None = None
    load_balancing: LoadBalancing | None = None
    batching: Batching | None = None
    served_model_name: str | None = None

    def batching_enabled(self) -> bool:
        """Whether traffic goes through the batchers."""
        return self.batching is not None and self.batching.enabled


def check_model_policy(policy: ModelPolicy, model: str, versions: Collection[str]) -> None:
    """Raise InvalidInput when ``policy`` breaks a rule that needs the model's state.

    The rules: every version named exists, a try never outlives the request,
    and no two experiments match the same header value.
    """
    unknown = sorted(policy.versions_referenced() - set(versions))
    if unknown:
        raise InvalidInput(
            {
                "message": f"model {model!r} has no version(s) {unknown}",
                "unknown_versions": unknown,
            }
        )
    retries = policy.retries
    if retries is not None and retries.per_try_timeout_ms is not None:
        timeout = DEFAULT_REQUEST_TIMEOUT_MS
        if policy.timeouts is not None and policy.timeouts.request_timeout_ms is not None:
            timeout = policy.timeouts.request_timeout_ms
        if retries.per_try_timeout_ms > timeout:
            raise InvalidInput(
                {
                    "message": (
                        f"retries.per_try_timeout_ms ({retries.per_try_timeout_ms}) is longer "
                        f"than the request timeout ({timeout} ms): no retry could ever start"
                    ),
                    "field": "retries.per_try_timeout_ms",
                }
            )
    seen: set[tuple[str, str]] = set()
    for experiment in policy.experiments:
        key = (experiment.header.lower(), experiment.value)
        if key in seen:
            raise InvalidInput(
                {
                    "message": f"two experiments match {experiment.header}: {experiment.value}",
                    "field": "experiments",
                }
            )
        seen.add(key)


def model_policy_from_document(document: Mapping[str, Any] | None) -> ModelPolicy:
    """Rebuild a ModelPolicy from its JSON document (None or {} gives the empty policy)."""
    if not document:
        return ModelPolicy()
    retries = document.get("retries")
    return ModelPolicy(
        timeouts=_maybe(Timeouts, document.get("timeouts")),
        retries=(
            None
            if retries is None
            else Retries(
                **{
                    **retries,
                    "retry_on": tuple(retries.get("retry_on", DEFAULT_RETRY_ON)),
                    "retriable_status_codes": tuple(retries.get("retriable_status_codes", ())),
                }
            )
        ),
        shadow=_maybe(Shadow, document.get("shadow")),
        experiments=tuple(Experiment(**e) for e in document.get("experiments") or ()),
        sticky=_maybe(Sticky, document.get("sticky")),
        max_request_bytes=document.get("max_request_bytes"),
    )


def version_policy_from_document(document: Mapping[str, Any] | None) -> VersionPolicy:
    """Rebuild a VersionPolicy from its JSON document (None or {} gives the empty policy)."""
    if not document:
        return VersionPolicy()
    return VersionPolicy(
        circuit_breakers=_maybe(CircuitBreakers, document.get("circuit_breakers")),
        outlier_detection=_maybe(OutlierDetection, document.get("outlier_detection")),
        health_check=_maybe(HealthCheck, document.get("health_check")),
        load_balancing=_maybe(LoadBalancing, document.get("load_balancing")),
        batching=_maybe(Batching, document.get("batching")),
        served_model_name=document.get("served_model_name"),
    )


def _maybe(kind: type[T], document: Mapping[str, Any] | None) -> T | None:
    return None if document is None else kind(**document)
