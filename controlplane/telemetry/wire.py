"""A reader of Envoy's ``StreamMetricsMessage`` bytes that finds the families
that carry something, without decoding the others.

Envoy sends every used statistic in every flush: with thousands of clusters a
message is megabytes, and most of it is counters at delta 0 and empty
histograms. Decoding it all into messages and walking every family costs a
core per few dozen proxies; here one regular expression, run by the ``re``
engine in C, stops only at counters and gauges whose value is not zero and at
histograms with samples, and Python looks only at those.

The wire format is protobuf's (https://protobuf.dev/programming-guides/encoding/),
as Envoy's serializer writes it, fields in number order:

    StreamMetricsMessage: 1 identifier (first message only), 2 envoy_metrics (repeated)
    MetricFamily: 1 name, 3 type, 4 metric (one: Envoy does not emit tags as labels)
    Metric: 2 gauge / 3 counter {1 value: double}, 6 timestamp_ms, 7 histogram
    Histogram: 1 sample_count, 2 sample_sum: double, 3 bucket {1 cumulative_count, 2 upper_bound}

It relies on that layout: fields in number order, one metric per family and
no labels (Turnout's bootstrap sets ``emit_tags_as_labels: false``), names of
printable characters. A family written otherwise (labels before the value, say)
is not seen. :func:`read_slowly` decodes the whole message with protobuf and
gives the same result for Envoy's layout; the unit tests compare the two.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from controlplane.telemetry.protocol import COUNTER, GAUGE, HISTOGRAM, StreamMetricsMessage

__all__ = ["Flush", "from_families", "read", "read_slowly"]

_DOUBLE: Final = struct.Struct("<d")
# One bucket: cumulative_count (varint), upper_bound (double).
_BUCKET: Final = re.compile(
    rb"\x1a[\x00-\x7f]\x08([\x80-\xff]{0,9}[\x00-\x7f])\x11(.{8})", re.DOTALL
)
_BOUNDS: dict[bytes, tuple[float, ...]] = {}

# At a family's type field (0x18): a counter or gauge whose value is not 0.0,
# or a histogram whose sample_count is not 0. Group 1: counter/gauge type,
# group 2: the value's 8 bytes; group 3: the histogram's bytes from sample_count.
_INTERESTING: Final = re.compile(
    rb"\x18(?:"
    rb"([\x00\x01])\x22[\x0b-\x7f][\x12\x1a]\x09\x09(?!\x00{8})(.{8})"
    rb"|\x04\x22(?:[\x80-\xff]{1,2})?[\x00-\x7f](?:\x30[\x80-\xff]{0,9}[\x00-\x7f])?\x3a"
    rb"(?:[\x80-\xff]{1,2})?[\x00-\x7f]\x08(?=[^\x00])"
    rb")",
    re.DOTALL,
)


@dataclass(slots=True)
class Flush:
    """What one message carried, less zeros: the node (first message only),
    counters and gauges by name, histograms by name as (bounds, cumulative
    counts, sample_count, sample_sum)."""

    node_id: str | None
    zone: str
    counters: dict[str, float]
    gauges: dict[str, float]
    histograms: dict[str, tuple[tuple[float, ...], list[int], int, float]]

    def merge(self, later: Flush) -> None:
        """Fold ``later``, a flush of the same stream, into this one, as if one
        flush had carried both: counters and histograms are deltas and add
        (bucket by bucket), gauges are the latest values and are replaced by
        ``later``'s (a gauge it does not carry is zero). A histogram whose
        bounds changed between the two (Envoy's do not, within one stream)
        keeps the later one's."""
        counters = self.counters
        for name, value in later.counters.items():
            counters[name] = counters.get(name, 0.0) + value
        self.gauges = dict(later.gauges)
        histograms = self.histograms
        for name, histogram in later.histograms.items():
            earlier = histograms.get(name)
            if earlier is None or earlier[0] != histogram[0]:
                histograms[name] = histogram
                continue
            bounds, counts, count, total = histogram
            histograms[name] = (
                bounds,
                [a + b for a, b in zip(earlier[1], counts, strict=True)],
                earlier[2] + count,
                earlier[3] + total,
            )


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _name_at(data: bytes, end: int) -> str | None:
    """The family name that ends at ``end`` (where its type field starts)."""
    start = data.rfind(b"\x0a", max(0, end - 300), end)
    while start >= 0:
        length = data[start + 1] if start + 1 < end else -1
        if length == end - start - 2:
            return data[start + 2 : end].decode("utf-8", "replace")
        # The length byte itself may be 0x0a (a 10-byte name), or 0x0a is in a value.
        start = data.rfind(b"\x0a", max(0, end - 300), start)
    return None


def _histogram(data: bytes, i: int) -> tuple[tuple[float, ...], list[int], int, float] | None:
    """Decode the Histogram whose sample_count field starts at ``i`` (after
    its tag and length varint): bounds, cumulative counts, count and sum."""
    j = i - 1
    while data[j - 1] >= 0x80:  # back over the length varint, to its first byte
        j -= 1
    length, start = _varint(data, j)
    count, k = _varint(data, i + 1)
    if data[k] != 0x11:
        return None
    total = _DOUBLE.unpack_from(data, k + 1)[0]
    buckets = _BUCKET.findall(data, k + 9, start + length)
    if not buckets:
        return None
    raw = b"".join([bound for _, bound in buckets])
    bounds = _BOUNDS.get(raw)
    if bounds is None:
        bounds = tuple(_DOUBLE.unpack_from(raw, n)[0] for n in range(0, len(raw), 8))
        _BOUNDS[raw] = bounds
    counts = [v[0] if len(v) == 1 else _varint(v, 0)[0] for v, _ in buckets]
    return bounds, counts, count, total


def read(data: bytes) -> Flush:
    """Return the families of one serialised ``StreamMetricsMessage`` that carry
    a value other than zero (see the module docs)."""
    node_id: str | None = None
    zone = ""
    if data[:1] == b"\x0a":  # the identifier: decode it with protobuf, it is small
        length, start = _varint(data, 1)
        head: Any = StreamMetricsMessage.FromString(data[: start + length])
        node_id = head.identifier.node.id
        zone = head.identifier.node.locality.zone
    counters: dict[str, float] = {}
    gauges: dict[str, float] = {}
    histograms: dict[str, tuple[tuple[float, ...], list[int], int, float]] = {}
    unpack = _DOUBLE.unpack
    rfind = data.rfind
    for match in _INTERESTING.finditer(data):
        at = match.start()
        start = rfind(b"\x0a", at - 300 if at > 300 else 0, at)
        if start >= 0 and data[start + 1] == at - start - 2:
            name = data[start + 2 : at].decode("utf-8", "replace")
        else:
            found = _name_at(data, at)
            if found is None:
                continue
            name = found
        kind, raw = match.groups()
        if kind is not None:
            if kind == b"\x00":
                counters[name] = counters.get(name, 0.0) + unpack(raw)[0]
            else:
                gauges[name] = unpack(raw)[0]
        else:
            histogram = _histogram(data, match.end() - 1)
            if histogram is not None:
                histograms[name] = histogram
    return Flush(node_id, zone, counters, gauges, histograms)


def from_families(families: Iterable[Any]) -> Flush:
    """The same as :func:`read`, from decoded ``MetricFamily`` messages."""
    flush = Flush(None, "", {}, {}, {})
    for family in families:
        name = family.name
        kind = family.type
        for metric in family.metric:
            if kind == COUNTER:
                if metric.counter.value:
                    flush.counters[name] = flush.counters.get(name, 0.0) + metric.counter.value
            elif kind == GAUGE:
                if metric.gauge.value:
                    flush.gauges[name] = metric.gauge.value
            elif kind == HISTOGRAM and metric.histogram.sample_count:
                h = metric.histogram
                flush.histograms[name] = (
                    tuple(b.upper_bound for b in h.bucket),
                    [b.cumulative_count for b in h.bucket],
                    h.sample_count,
                    h.sample_sum,
                )
    return flush


def read_slowly(data: bytes) -> Flush:
    """The same as :func:`read`, decoding the whole message with protobuf."""
    message: Any = StreamMetricsMessage.FromString(data)
    flush = from_families(message.envoy_metrics)
    if message.HasField("identifier"):
        flush.node_id = message.identifier.node.id
        flush.zone = message.identifier.node.locality.zone
    return flush
