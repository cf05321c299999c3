"""Pure functions that recognise, validate, merge and split inference calls.

Three protocols are batched:

- Open Inference Protocol / KServe v2, ``POST /v2/models/{name}[/versions/{v}]/infer``,
  in JSON or with the binary tensor data extension (see ``_kserve_v2``).
- OpenAI embeddings, ``POST /v1/embeddings``: input lists are merged; each caller
  gets its own items re-indexed from 0 and a share of the usage.
- KServe v1 / TF-Serving, ``POST /v1/models/{name}:predict`` with ``"instances"``.

``parse_call`` returns ``None`` for anything that must pass through unchanged
(other paths, streaming, compressed bodies, columnar ``"inputs"``, shapes that
differ inside one request) and raises ``MalformedInput`` for a body that can
never be valid, so that it fails alone, before it joins a batch.
``merge_request`` builds the one upstream request (body and framing headers);
``split_answer`` turns the upstream's answer into one answer per call, or
raises ``SplitError``. ``merge_calls`` and ``split_response`` are their
body-only forms for JSON protocols.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from . import _tensors
from ._call import Call, MalformedInput, Message, Protocol, SplitError, canon
from ._kserve_v2 import framing_headers, merge_v2, parse_v2, split_v2

__all__ = [
    "Call",
    "MalformedInput",
    "Message",
    "Protocol",
    "SplitError",
    "merge_calls",
    "merge_request",
    "parse_call",
    "split_answer",
    "split_response",
]

_V2_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
_V1_PATH = re.compile(r"^/v1/models/[^/:]+(/versions/[^/:]+|/labels/[^/:]+)?:predict$")
_OPENAI_PATH = re.compile(r"^(/openai)?/v1/embeddings$")


def parse_call(
    method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
) -> Call | None:
    """Return the call ``body`` describes, ``None`` to pass it through, or raise.

    ``headers`` must be case-insensitive (aiohttp's ``CIMultiDict`` is). The
    Authorization header and query string become part of the batch key, so
    calls made with different credentials never share an upstream call.
    """
    if method != "POST":
        return None
    protocol = _protocol_for(path)
    if protocol is None or _not_batchable(protocol, headers):
        return None
    base_key = (protocol.value, path, query, headers.get("authorization", ""))
    if protocol is Protocol.KSERVE_V2:
        raw_length = headers.get(_tensors.HEADER_LENGTH)
        try:
            length = None if raw_length is None else _tensors.header_length(raw_length, len(body))
        except _tensors.FramingError as exc:
            raise MalformedInput(str(exc)) from exc
        return parse_v2(base_key, body, length)
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedInput(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MalformedInput("body must be a JSON object")
    if doc.get("stream") is True:
        return None
    if protocol is Protocol.OPENAI_EMBEDDINGS:
        return _parse_openai(base_key, body, doc)
    return _parse_v1(base_key, body, doc)


def _protocol_for(path: str) -> Protocol | None:
    if _V2_PATH.match(path):
        return Protocol.KSERVE_V2
    if _OPENAI_PATH.match(path):
        return Protocol.OPENAI_EMBEDDINGS
    if _V1_PATH.match(path):
        return Protocol.KSERVE_V1
    return None


def _not_batchable(protocol: Protocol, headers: Mapping[str, str]) -> bool:
    content_type = headers.get("content-type", "application/json").lower()
    # A v2 body may carry binary tensors after its JSON header; the binary data
    # extension's own example sends it as application/octet-stream.
    readable = "json" in content_type or (
        protocol is Protocol.KSERVE_V2 and content_type.startswith("application/octet-stream")
    )
    return (
        not readable
        or "text/event-stream" in headers.get("accept", "").lower()
        or "content-encoding" in headers
        or (protocol is not Protocol.KSERVE_V2 and _tensors.HEADER_LENGTH in headers)
    )


# --- OpenAI embeddings ------------------------------------------------------------------


def _is_tokens(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def _parse_openai(base_key: tuple[Any, ...], body: bytes, doc: dict[str, Any]) -> Call:
    raw = doc.get("input")
    rows: list[Any]
    if isinstance(raw, str) or _is_tokens(raw):
        rows = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(r, str) or _is_tokens(r) for r in raw):
        rows = list(raw)
    else:
        raise MalformedInput("input must be a string, a token list, or a non-empty list of them")
    if not isinstance(doc.get("model", ""), str):
        raise MalformedInput("model must be a string")
    rest = {k: v for k, v in doc.items() if k != "input"}
    weight = sum(len(row) for row in rows if isinstance(row, str | list)) or 1
    return Call(
        Protocol.OPENAI_EMBEDDINGS,
        (*base_key, canon(rest)),
        len(rows),
        body,
        doc,
        rows,
        weight,
    )


def _apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder; sums exactly)."""
    whole = sum(weights) or 1
    shares = [total * w / whole for w in weights]
    parts = [math.floor(s) for s in shares]
    order = sorted(range(len(weights)), key=lambda i: parts[i] - shares[i])
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _split_openai(doc: dict[str, Any], calls: Sequence[Call]) -> list[dict[str, Any]]:
    data = doc.get("data")
    total = sum(call.rows for call in calls)
    if not isinstance(data, list) or len(data) != total:
        raise SplitError(f"response carries {len(data or [])} embeddings, expected {total}")
    try:
        ordered = sorted(data, key=lambda item: int(item["index"]))
    except (TypeError, KeyError, ValueError) as exc:
        raise SplitError("embeddings lack an integer index") from exc
    if [int(item["index"]) for item in ordered] != list(range(total)):
        raise SplitError("embedding indices are not 0..n-1")
    usage = doc.get("usage")
    weights = [call.weight for call in calls]
    usages: dict[str, list[int]] = {}
    if isinstance(usage, dict):
        for field, value in usage.items():
            if isinstance(value, int) and not isinstance(value, bool):
                usages[field] = _apportion(value, weights)
    parts = []
    offset = 0
    for position, call in enumerate(calls):
        part = {k: v for k, v in doc.items() if k not in ("data", "usage")}
        chunk = ordered[offset : offset + call.rows]
        part["data"] = [{**item, "index": i} for i, item in enumerate(chunk)]
        if isinstance(usage, dict):
            part["usage"] = {
                **usage,
                **{field: split[position] for field, split in usages.items()},
            }
        parts.append(part)
        offset += call.rows
    return parts


# --- KServe v1 / TF-Serving --------------------------------------------------------------


def _signature(value: Any) -> Any:
    """Return a hashable description of ``value``'s shape, or raise ``ValueError`` if ragged."""
    if isinstance(value, list):
        if not value:
            return ("list", 0)
        inner = {_signature(element) for element in value}
        if len(inner) != 1:
            raise ValueError("ragged")
        return ("list", len(value), inner.pop())
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _signature(v)) for k, v in value.items())))
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _parse_v1(base_key: tuple[Any, ...], body: bytes, doc: dict[str, Any]) -> Call | None:
    if "instances" not in doc:
        if "inputs" in doc:
            return None  # columnar format: no row dimension we can rely on
        raise MalformedInput("body must carry instances (or inputs)")
    instances = doc["instances"]
    if not isinstance(instances, list) or not instances:
        raise MalformedInput("instances must be a non-empty list")
    try:
        signature = _signature(instances)
    except ValueError:
        return None  # instances of different shapes: let the upstream judge
    rest = {k: v for k, v in doc.items() if k != "instances"}
    key = (*base_key, canon(rest), signature[2])
    return Call(Protocol.KSERVE_V1, key, len(instances), body, doc, instances)


def _split_v1(doc: dict[str, Any], calls: Sequence[Call]) -> list[dict[str, Any]]:
    predictions = doc.get("predictions")
    total = sum(call.rows for call in calls)
    if not isinstance(predictions, list) or len(predictions) != total:
        raise SplitError(f"response does not carry {total} predictions")
    parts = []
    offset = 0
    for call in calls:
        part = {k: v for k, v in doc.items() if k != "predictions"}
        part["predictions"] = predictions[offset : offset + call.rows]
        parts.append(part)
        offset += call.rows
    return parts


# --- merge and split ----------------------------------------------------------------------


def merge_request(calls: Sequence[Call]) -> Message:
    """Return the one upstream request serving all ``calls`` (which share a key).

    A single call is sent with its original body, byte for byte.
    """
    first = calls[0]
    if len(calls) == 1:
        return Message(first.body, framing_headers(first.header_length))
    if first.protocol is Protocol.KSERVE_V2:
        return merge_v2(calls)
    merged: dict[str, Any]
    if first.protocol is Protocol.OPENAI_EMBEDDINGS:
        merged = {**first.doc, "input": [row for call in calls for row in call.rows_data]}
    else:
        merged = {**first.doc, "instances": [row for call in calls for row in call.rows_data]}
    return Message(json.dumps(merged, separators=(",", ":")).encode(), framing_headers(None))


def merge_calls(calls: Sequence[Call]) -> bytes:
    """Return the body of ``merge_request(calls)``."""
    return merge_request(calls).body


def split_answer(answer: Message, calls: Sequence[Call]) -> list[Message]:
    """Return one answer per call, in order, from a batched call's answer.

    Raises ``SplitError`` when the answer cannot be read or does not have one
    row per merged row. Each part carries only its own rows (and, for KServe
    v2, its own request id, with outputs in the form its caller asked for).
    """
    protocol = calls[0].protocol
    if protocol is Protocol.KSERVE_V2:
        return split_v2(answer, calls)
    try:
        doc = json.loads(answer.body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SplitError("response is not JSON") from exc
    if not isinstance(doc, dict):
        raise SplitError("response is not a JSON object")
    if protocol is Protocol.OPENAI_EMBEDDINGS:
        parts = _split_openai(doc, calls)
    else:
        parts = _split_v1(doc, calls)
    headers = framing_headers(None)
    return [Message(json.dumps(part, separators=(",", ":")).encode(), headers) for part in parts]


def split_response(body: bytes, calls: Sequence[Call]) -> list[bytes]:
    """Return the bodies of ``split_answer`` for a JSON answer ``body``."""
    return [part.body for part in split_answer(Message(body, framing_headers(None)), calls)]
