"""Shadow comparisons: one answer of each side to the same request, and what
differs between them (docs/shadow.md).

Envoy reports each side's answer (a :class:`Half`) in the report format of
:func:`encode_report` / :func:`decode_report`, the one mapping of that
representation; :func:`compare` turns a primary half and a shadow half into a
:class:`Comparison`. Pure functions: no clock, no I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from controlplane.domain.errors import InvalidInput

__all__ = [
    "DIFF_CHARS",
    "REPORT_METHOD",
    "REPORT_SERVICE",
    "REPORT_VERSION",
    "Comparison",
    "Half",
    "Side",
    "body_digest",
    "compare",
    "decode_report",
    "encode_report",
    "first_difference",
    "numeric_difference",
    "numeric_outputs",
]

Side = Literal["primary", "shadow"]
REPORT_VERSION = "turnout-shadow/1"
# Envoy sends each report as this unary gRPC method to the control plane's gRPC port.
REPORT_SERVICE = "turnout.shadow.v1.ShadowReports"
REPORT_METHOD = "Report"
# A disagreement's diff is at most this long.
DIFF_CHARS = 200
# Top-level fields that differ between any two calls (ids, clocks) or name the
# server: OpenAI answers (they carry "object") and KServe v2 answers (they carry
# "outputs") are compared without them.
_VOLATILE_OPENAI = frozenset({"id", "created", "model", "system_fingerprint"})
_VOLATILE_KSERVE = frozenset({"id", "model_name", "model_version"})


@dataclass(frozen=True, slots=True)
class Half:
    """One side's answer to a request, as Envoy saw it.

    ``body`` is None when the body was not read: larger than the policy's
    ``max_body_bytes``, of unknown length (chunked or streamed), or absent. A
    half that waited in the database without its body (the policy keeps none)
    carries its :func:`body_digest` instead; it is not part of the report.
    """

    request_id: str
    model: str
    side: Side
    version: str
    status: int
    duration_ms: float
    body: bytes | None
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class Comparison:
    """The primary's and the shadow's answers to one request, side by side.

    ``body_agree`` is None when either body was not read (then only status and
    latency are compared). ``max_abs_diff`` and ``cosine`` are set for numeric
    outputs of the same length (KServe v2 ``outputs[].data``, OpenAI
    ``data[].embedding``). ``diff`` says where the bodies first differ (values
    only when the bodies may be kept); the bodies themselves are kept only when
    the policy allows it.
    """

    request_id: str
    model: str
    primary_version: str
    shadow_version: str
    primary_status: int
    shadow_status: int
    primary_ms: float
    shadow_ms: float
    status_agree: bool
    body_agree: bool | None
    max_abs_diff: float | None
    cosine: float | None
    diff: str | None
    primary_body: bytes | None
    shadow_body: bytes | None

    @property
    def agrees(self) -> bool:
        """Whether status and body (where compared) agree."""
        return self.status_agree and self.body_agree is not False


def encode_report(half: Half) -> bytes:
    """Return ``half`` in the report format the Envoy scripts send: eight lines
    (format, model, side, version, request id, status, duration in ms, then
    ``body <length>`` or ``nobody``), then the body bytes."""
    length = "nobody" if half.body is None else f"body {len(half.body)}"
    head = "\n".join(
        [
            REPORT_VERSION,
            half.model,
            half.side,
            half.version,
            half.request_id,
            str(half.status),
            repr(float(half.duration_ms)),
            length,
        ]
    )
    return head.encode() + b"\n" + (half.body or b"")


def decode_report(data: bytes) -> Half:
    """Return the Half of a report (:func:`encode_report`); raise InvalidInput when
    it is not one."""
    parts = data.split(b"\n", 8)
    if len(parts) != 9:
        raise InvalidInput("a shadow report has eight header lines and a body")
    try:
        fields = [p.decode("ascii") for p in parts[:8]]
    except UnicodeDecodeError as exc:
        raise InvalidInput("a shadow report's header lines are ASCII") from exc
    fmt, model, side, version, request_id, status, duration, length = fields
    if fmt != REPORT_VERSION:
        raise InvalidInput(f"unknown shadow report format {fmt!r}")
    if side not in ("primary", "shadow"):
        raise InvalidInput(f"unknown side {side!r}")
    if not model or not request_id:
        raise InvalidInput("a shadow report names its model and request")
    try:
        code = int(status)
        ms = float(duration)
    except ValueError as exc:
        raise InvalidInput("status and duration are numbers") from exc
    if not math.isfinite(ms):
        raise InvalidInput("duration is a finite number")
    body: bytes | None = None
    if length.startswith("body "):
        body = parts[8]
        if str(len(body)) != length[5:]:
            raise InvalidInput("the body's length is not the one announced")
    elif length != "nobody" or parts[8]:
        raise InvalidInput("a report without a body has nothing after its header")
    return Half(
        request_id=request_id,
        model=model,
        side="primary" if side == "primary" else "shadow",
        version=version,
        status=code,
        duration_ms=ms,
        body=body,
    )


def compare(primary: Half, shadow: Half, *, keep_bodies: bool) -> Comparison:
    """Return how ``shadow``'s answer differs from ``primary``'s; keep both bodies
    only with ``keep_bodies``."""
    body_agree: bool | None = None
    max_abs: float | None = None
    cosine: float | None = None
    diff: str | None = None
    if primary.body is not None and shadow.body is not None:
        left, right = _parse(primary.body), _parse(shadow.body)
        if isinstance(left, _Raw) or isinstance(right, _Raw):
            body_agree = primary.body == shadow.body
            if not body_agree:
                diff = "bodies differ (not both JSON)"
        else:
            left, right = _comparable(left), _comparable(right)
            body_agree = left == right
            if not body_agree:
                diff = first_difference(left, right, show_values=keep_bodies)
            a, b = numeric_outputs(left), numeric_outputs(right)
            if a is not None and b is not None:
                numbers = numeric_difference(a, b)
                if numbers is not None:
                    max_abs, cosine = numbers
    elif _digest_of(primary) is not None and _digest_of(shadow) is not None:
        # One side waited in the database as a digest: equality only.
        body_agree = _digest_of(primary) == _digest_of(shadow)
        if not body_agree:
            diff = "bodies differ"
    status_agree = primary.status == shadow.status
    if diff is None and not status_agree:
        diff = f"status {primary.status} != {shadow.status}"
    return Comparison(
        request_id=primary.request_id,
        model=primary.model,
        primary_version=primary.version,
        shadow_version=shadow.version,
        primary_status=primary.status,
        shadow_status=shadow.status,
        primary_ms=primary.duration_ms,
        shadow_ms=shadow.duration_ms,
        status_agree=status_agree,
        body_agree=body_agree,
        max_abs_diff=max_abs,
        cosine=cosine,
        diff=None if diff is None else diff[:DIFF_CHARS],
        primary_body=primary.body if keep_bodies else None,
        shadow_body=shadow.body if keep_bodies else None,
    )


def body_digest(body: bytes) -> str:
    """Return a digest that two bodies share exactly when :func:`compare` finds them
    equal: SHA-256 of the canonical JSON without the volatile fields, or of the
    bytes of a body that is not JSON."""
    document = _parse(body)
    if isinstance(document, _Raw):
        return "raw:" + hashlib.sha256(body).hexdigest()
    canonical = json.dumps(
        _comparable(document), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return "json:" + hashlib.sha256(canonical.encode()).hexdigest()


def _digest_of(half: Half) -> str | None:
    if half.body is not None:
        return body_digest(half.body)
    return half.digest


class _Raw:
    """A body that is not JSON."""


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _Raw()


def _comparable(document: Any) -> Any:
    if isinstance(document, dict):
        if "object" in document:
            return {k: v for k, v in document.items() if k not in _VOLATILE_OPENAI}
        if "outputs" in document:
            return {k: v for k, v in document.items() if k not in _VOLATILE_KSERVE}
    return document


def numeric_outputs(document: Any) -> list[float] | None:
    """Return the numbers of a numeric answer, flattened in order: every KServe v2
    output's ``data``, or every OpenAI embedding; None for any other answer."""
    if not isinstance(document, dict):
        return None
    outputs = document.get("outputs")
    if isinstance(outputs, list) and outputs:
        return _numbers([o.get("data") if isinstance(o, dict) else None for o in outputs])
    data = document.get("data")
    if isinstance(data, list) and data:
        return _numbers([d.get("embedding") if isinstance(d, dict) else None for d in data])
    return None


def _numbers(arrays: list[Any]) -> list[float] | None:
    flat: list[float] = []
    for array in arrays:
        if not isinstance(array, list):
            return None
        stack = list(reversed(array))
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            elif isinstance(item, bool) or not isinstance(item, int | float):
                return None
            else:
                flat.append(float(item))
    return flat


def numeric_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float | None] | None:
    """Return (largest absolute difference, cosine similarity) of two vectors of the
    same length; the cosine is None when either vector is all zeros; None when the
    lengths differ or either holds a non-finite number."""
    if len(a) != len(b) or not a:
        return None
    if not all(math.isfinite(x) for x in (*a, *b)):
        return None
    max_abs = max(abs(x - y) for x, y in zip(a, b, strict=True))
    norm = math.sqrt(math.fsum(x * x for x in a) * math.fsum(y * y for y in b))
    cosine = None
    if norm > 0:
        cosine = max(-1.0, min(1.0, math.fsum(x * y for x, y in zip(a, b, strict=True)) / norm))
    return max_abs, cosine


def first_difference(left: Any, right: Any, *, show_values: bool, path: str = "$") -> str | None:
    """Return where two JSON documents first differ (a path such as
    ``$.outputs[0].data[3]``), with both values when ``show_values``; None when
    they are equal."""
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right)):
            where = f"{path}.{key}"
            if key not in left or key not in right:
                return f"{where}: only in {'shadow' if key not in left else 'primary'}"
            found = first_difference(left[key], right[key], show_values=show_values, path=where)
            if found is not None:
                return found
        return None
    if isinstance(left, list) and isinstance(right, list):
        for i, (x, y) in enumerate(zip(left, right, strict=False)):
            found = first_difference(x, y, show_values=show_values, path=f"{path}[{i}]")
            if found is not None:
                return found
        if len(left) != len(right):
            return f"{path}: length {len(left)} != {len(right)}"
        return None
    if left == right:
        return None
    if not show_values:
        return f"{path} differs"
    return f"{path}: {json.dumps(left)[:80]} != {json.dumps(right)[:80]}"
