"""The receiving end of shadow comparisons: Envoy's reports, paired by request id.

Every Envoy sends each half of a compared request (the primary's answer, the
shadow's) as a unary gRPC call to the control plane's gRPC port
(controlplane.xds.shadow). :class:`ShadowPairs` holds a half until its other
half arrives, in bounded memory: at most ``max_pending`` halves, each for at
most ``expiry_s`` (the oldest go first). With several replicas the two halves
of a request may reach different ones (each report is its own call, balanced
over the control-plane addresses): a half still alone after a moment is handed
to the database, where any replica pairs it (controlplane.services.shadow).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from controlplane.domain.errors import InvalidInput
from controlplane.domain.shadow import REPORT_METHOD, REPORT_SERVICE, Half, decode_report

__all__ = ["PairCounts", "ShadowPairs", "shadow_report_handler"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PairCounts:
    """What became of the halves so far."""

    paired: int = 0
    expired: int = 0
    evicted: int = 0
    rejected: int = 0


class ShadowPairs:
    """Halves waiting for their other half, by (model, request id)."""

    def __init__(self, *, max_pending: int, expiry_s: float, clock: Callable[[], float]) -> None:
        self.max_pending = max_pending
        self.expiry_s = expiry_s
        self._clock = clock
        self._pending: OrderedDict[tuple[str, str], tuple[float, Half]] = OrderedDict()
        self.counts = PairCounts()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, half: Half) -> tuple[Half, Half] | None:
        """Take one half; return (primary, shadow) when it completes a pair."""
        now = self._clock()
        self._expire(now)
        key = (half.model, half.request_id)
        waiting = self._pending.get(key)
        if waiting is not None and waiting[1].side != half.side:
            del self._pending[key]
            self.counts.paired += 1
            other = waiting[1]
            return (half, other) if half.side == "primary" else (other, half)
        # A first half, or the same side again (the later one wins).
        self._pending.pop(key, None)
        self._pending[key] = (now, half)
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
            self.counts.evicted += 1
        return None

    def take_older_than(self, age_s: float) -> list[Half]:
        """Remove and return the halves that have waited ``age_s`` or longer, oldest
        first (for pairing across replicas, controlplane.services.shadow)."""
        now = self._clock()
        self._expire(now)
        taken = []
        while self._pending:
            at, half = next(iter(self._pending.values()))
            if now - at < age_s:
                break
            self._pending.popitem(last=False)
            taken.append(half)
        return taken

    def _expire(self, now: float) -> None:
        while self._pending:
            at, _ = next(iter(self._pending.values()))
            if now - at < self.expiry_s:
                return
            self._pending.popitem(last=False)
            self.counts.expired += 1


def shadow_report_handler(
    pairs: ShadowPairs, on_pair: Callable[[Half, Half], object]
) -> grpc.GenericRpcHandler:
    """Return the gRPC handler of Envoy's shadow reports: each report's half goes to
    ``pairs``, each completed pair to ``on_pair``."""

    async def report(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            half = decode_report(data)
        except InvalidInput as exc:
            pairs.counts.rejected += 1
            log.warning("shadow.report_rejected", extra={"reason": str(exc.detail)})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not a shadow report")
        pair = pairs.add(half)
        if pair is not None:
            on_pair(*pair)
        return b""

    return grpc.method_handlers_generic_handler(
        REPORT_SERVICE,
        {
            REPORT_METHOD: grpc.unary_unary_rpc_method_handler(
                report, request_deserializer=None, response_serializer=None
            )
        },
    )
