"""Batching policy per model version, and the seam through which it changes live.

``BatchingPolicy`` is immutable data validated once, at construction.
``PolicySource`` is the seam to the outside world: one method that returns the
current policy, or ``None`` when it could not be learned (the batcher then
keeps the policy it has). ``HttpPolicySource`` reads the control plane's admin
API; tests use a fake source.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

__all__ = [
    "BatchingPolicy",
    "HttpPolicySource",
    "PolicyError",
    "PolicySource",
    "policy_from_json",
]

log = logging.getLogger("turnout.batcher.policy")


class PolicyError(ValueError):
    """A batching policy field is missing, of the wrong type or out of range."""


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """How the batcher treats one model version's traffic.

    - ``enabled``: when false, requests pass through one by one, unchanged.
    - ``max_batch_size``: rows (not requests) in one upstream call, 1..4096.
      32 is where a GPU (and the MiniLM CPU server) stops gaining much.
    - ``max_queue_delay_ms``: the longest the dispatcher holds a request to let
      a batch grow while a free upstream slot exists (only with more than one
      slot; with an idle upstream it never holds). 0..60000.
    - ``max_queue``: queued requests beyond which new ones get 429, 1..1e6.
    - ``slo_ms``: the latency objective: a request's deadline is its arrival
      plus ``slo_ms``, or plus Envoy's ``x-envoy-expected-rq-timeout-ms`` when
      that is shorter. 1..3.6e6.

    Construction raises ``PolicyError`` on an out-of-range field.
    """

    enabled: bool = True
    max_batch_size: int = 32
    max_queue_delay_ms: float = 10.0
    max_queue: int = 1024
    slo_ms: float = 1000.0

    def __post_init__(self) -> None:
        _check(isinstance(self.enabled, bool), "enabled must be a boolean")
        _check_int("max_batch_size", self.max_batch_size, 1, 4096)
        _check_int("max_queue", self.max_queue, 1, 1_000_000)
        _check_number("max_queue_delay_ms", self.max_queue_delay_ms, 0.0, 60_000.0)
        _check_number("slo_ms", self.slo_ms, 1.0, 3_600_000.0)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise PolicyError(message)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    _check(ok, f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _check_number(name: str, value: object, low: float, high: float) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )
    _check(ok, f"{name} must be a number in [{low}, {high}], got {value!r}")


def policy_from_json(batching: Any, *, base: BatchingPolicy | None = None) -> BatchingPolicy:
    """Return the policy an admin API ``"batching"`` field describes.

    ``None`` (JSON null) means batching is off: ``base`` (or the defaults) with
    ``enabled=False``. A dict may omit fields; omitted ones come from the
    defaults. Raises ``PolicyError`` for anything else or an invalid field.
    """
    if batching is None:
        start = base or BatchingPolicy()
        return BatchingPolicy(
            enabled=False,
            max_batch_size=start.max_batch_size,
            max_queue_delay_ms=start.max_queue_delay_ms,
            max_queue=start.max_queue,
            slo_ms=start.slo_ms,
        )
    if not isinstance(batching, dict):
        raise PolicyError("batching must be an object or null")
    known = {"enabled", "max_batch_size", "max_queue_delay_ms", "max_queue", "slo_ms"}
    fields = {key: value for key, value in batching.items() if key in known}
    try:
        return BatchingPolicy(**fields)
    except TypeError as exc:
        raise PolicyError(str(exc)) from exc


class PolicySource(Protocol):
    """Where a running batcher learns its policy.

    ``fetch`` returns the current policy, or ``None`` when it cannot tell (the
    batcher keeps its last policy). It must not raise for ordinary failures
    of the source; the batcher calls it about twice a second.
    """

    async def fetch(self) -> BatchingPolicy | None:
        """Return the current policy, or ``None`` to keep the last one."""
        ...


class HttpPolicySource:
    """Reads a model version's policy from the control plane's admin API.

    Each ``fetch`` GETs ``{control_plane_url}/v1/models/{model}/versions/{version}``
    and reads its ``"batching"`` field (an object, or null for pass-through).
    Any failure (network, status, body) is logged without secrets and gives
    ``None``. Call ``close`` when done.
    """

    def __init__(
        self,
        control_plane_url: str,
        model: str,
        version: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self.url = f"{control_plane_url.rstrip('/')}/v1/models/{model}/versions/{version}"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._last: BatchingPolicy | None = None

    async def fetch(self) -> BatchingPolicy | None:
        """Return the policy the control plane holds now, or ``None`` on any failure."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(self.url, headers=self._headers) as response:
                if response.status != 200:
                    log.warning(
                        "policy fetch failed", extra={"url": self.url, "status": response.status}
                    )
                    return None
                body = await response.json(content_type=None)
            if not isinstance(body, dict) or "batching" not in body:
                raise PolicyError("response has no batching field")
            self._last = policy_from_json(body["batching"], base=self._last)
            return self._last
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning(
                "policy fetch failed",
                extra={"url": self.url, "error": type(exc).__name__, "detail": str(exc)[:200]},
            )
            return None

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
