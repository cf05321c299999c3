"""Each model version's traffic, live from Envoy (``read``).

The figures come from this replica's traffic window (``controlplane.telemetry``):
what the proxies streaming to it reported over the last ``window`` (``60s``,
``5m`` or plain seconds; at most the retention). Like the proxies' routes, they
read only memory.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from controlplane.api.deps import RuntimeDep, require
from controlplane.api.schemas import ErrorBody
from controlplane.domain.errors import InvalidInput, NotFound
from controlplane.domain.keys import Permission
from controlplane.domain.state import ModelSpec
from controlplane.telemetry.window import Figures, TrafficWindow

__all__ = ["parse_window", "router"]

router = APIRouter(tags=["metrics"])

DEFAULT_WINDOW = "60s"
_WINDOW = re.compile(r"^(\d+(?:\.\d+)?)(s|m)?$")

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "no valid API key"},
    403: {"model": ErrorBody, "description": "the key's role lacks the permission"},
    422: {"model": ErrorBody, "description": "the window is not a duration within the retention"},
}


def parse_window(value: str, retention_s: float) -> float:
    """Return ``value`` (``60s``, ``5m``, ``90``) in seconds; raise InvalidInput
    unless it is a positive duration no longer than ``retention_s``."""
    match = _WINDOW.match(value.strip())
    if match is None:
        raise InvalidInput(f"window {value!r} is not a duration such as 60s or 5m")
    seconds = float(match.group(1)) * (60 if match.group(2) == "m" else 1)
    if not 0 < seconds <= retention_s:
        raise InvalidInput(
            f"window {value!r} must be more than 0 and at most {retention_s:g}s "
            "(TURNOUT_METRICS_RETENTION_S)"
        )
    return seconds


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


class LatencyOut(BaseModel):
    p50: float | None = Field(description="milliseconds; null without samples")
    p90: float | None
    p99: float | None


class BatchingOut(BaseModel):
    requests: int = Field(description="requests that went through a batcher")
    mean_batch_size: float | None = Field(
        description="request-weighted: the batch a request rode in"
    )
    queue_wait_p99_ms: float | None
    shed: int = Field(description="requests the batcher refused to keep its latency target")


class FiguresOut(BaseModel):
    requests: int = Field(description="requests answered (retries count once)")
    rps: float
    errors: int = Field(description="5xx responses")
    error_rate: float | None = Field(description="errors / requests; null without requests")
    latency_ms: LatencyOut = Field(description="upstream latency, from Envoy's histograms")
    latency_samples: int
    responses: dict[str, int] = Field(description="by status code")
    classes: dict[str, int] = Field(description="by status class: 2xx, 4xx, 5xx")
    retries: int
    overflows: int = Field(description="refused by a circuit breaker")
    ejections: int = Field(description="hosts ejected by outlier detection")
    active_requests: int
    pending_requests: int
    ejected_hosts: int
    batching: BatchingOut | None

    @classmethod
    def of(cls, figures: Figures) -> FiguresOut:
        b = figures.batching
        return cls(
            requests=figures.requests,
            rps=round(figures.rps, 3),
            errors=figures.errors,
            error_rate=_round(figures.error_rate, 4),
            latency_ms=LatencyOut.model_validate(
                {name: _round(ms, 3) for name, ms in figures.latency_ms.items()}
            ),
            latency_samples=figures.latency_samples,
            responses=figures.responses,
            classes=figures.classes(),
            retries=figures.retries,
            overflows=figures.overflows,
            ejections=figures.ejections,
            active_requests=figures.active_requests,
            pending_requests=figures.pending_requests,
            ejected_hosts=figures.ejected_hosts,
            batching=(
                BatchingOut(
                    requests=b.requests,
                    mean_batch_size=_round(b.mean_batch_size, 2),
                    queue_wait_p99_ms=_round(b.queue_wait_p99_ms, 3),
                    shed=b.shed,
                )
                if b is not None
                else None
            ),
        )


class VersionFiguresOut(FiguresOut):
    version: str
    weight: int = Field(description="the version's traffic weight now")
    zones: dict[str, FiguresOut] = Field(
        description="the same, per zone of the reporting proxies (where they have one)"
    )


class ModelMetricsOut(BaseModel):
    model: str
    window_s: float = Field(description="seconds the figures cover")
    versions: list[VersionFiguresOut]
    total: FiguresOut


class TenantFiguresOut(FiguresOut):
    tenant: str = Field(description='the verified tenant; "-" for requests without one')


class SummaryOut(BaseModel):
    window_s: float
    models: list[ModelMetricsOut]
    tenants: list[TenantFiguresOut]


def _model_metrics(
    window: TrafficWindow,
    model: ModelSpec,
    seconds: float,
    reported: tuple[Figures, dict[str, tuple[Figures, dict[str, Figures]]]] | None = None,
) -> ModelMetricsOut:
    """``reported``: the model's figures and its versions' (read from ``window``
    when not given)."""
    if reported is None:
        total = window.model_figures(model.name, seconds)
        by_version = window.version_figures(model.name, seconds)
    else:
        total, by_version = reported
    versions = []
    for version in model.versions:
        figures, zones = by_version.get(version.name) or (window.nothing(seconds), {})
        versions.append(
            VersionFiguresOut(
                version=version.name,
                weight=model.weight_of(version.name),
                zones={zone: FiguresOut.of(f) for zone, f in sorted(zones.items())},
                **FiguresOut.of(figures).model_dump(),
            )
        )
    return ModelMetricsOut(
        model=model.name,
        window_s=round(total.window_s, 3),
        versions=versions,
        total=FiguresOut.of(total),
    )


WindowQuery = Annotated[
    str, Query(description="how far back: 60s, 5m or seconds", examples=["60s"])
]


@router.get(
    "/v1/models/{model}/metrics",
    dependencies=[require(Permission.READ)],
    responses={**_ERRORS, 404: {"model": ErrorBody, "description": "no such model"}},
)
async def model_metrics(
    model: str, runtime: RuntimeDep, window: WindowQuery = DEFAULT_WINDOW
) -> ModelMetricsOut:
    """Per version and in total: rate, errors, latency percentiles and responses
    by code over the window, with the batchers' figures where batching is on."""
    seconds = parse_window(window, runtime.traffic.retention_s)
    state = runtime.sync.state
    spec = state.model(model) if state is not None else None
    if spec is None:
        raise NotFound(f"model {model!r} not found")
    return _model_metrics(runtime.traffic, spec, seconds)


@router.get(
    "/v1/metrics/summary",
    dependencies=[require(Permission.READ)],
    responses=_ERRORS,
    response_model=SummaryOut,
)
async def metrics_summary(runtime: RuntimeDep, window: WindowQuery = DEFAULT_WINDOW) -> Response:
    """Every model's figures over the window, and every tenant's. Computed at
    most once per `TURNOUT_METRICS_CACHE_S` and per 5-second slot of the window."""
    seconds = parse_window(window, runtime.traffic.retention_s)
    state = runtime.sync.state

    def compute() -> bytes:
        traffic = runtime.traffic
        nothing = traffic.nothing(seconds)
        reported = traffic.every_model_figures(seconds)
        models = [
            _model_metrics(traffic, model, seconds, reported.get(model.name) or (nothing, {}))
            for model in (state.models if state is not None else ())
        ]
        tenants = [
            TenantFiguresOut(tenant=subject or "-", **FiguresOut.of(figures).model_dump())
            for subject, figures in traffic.tenant_figures(seconds).items()
        ]
        covered = models[0].window_s if models else seconds
        summary = SummaryOut(window_s=covered, models=models, tenants=tenants)
        return summary.model_dump_json().encode()

    # The state's revision is part of the key: a change shows at once.
    key = ("summary", seconds, state.revision if state is not None else None)
    return Response(runtime.traffic_cache.get(key, compute), media_type="application/json")
