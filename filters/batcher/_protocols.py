"""Pure functions that recognise, validate, merge and split inference calls.

Three protocols are batched:

- Open Inference Protocol / KServe v2, ``POST /v2/models/{name}[/versions/{v}]/infer``:
  inputs are concatenated along dimension 0 when names, datatypes and trailing
  shapes match; outputs are split back by row.
  https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/inference_rest.md
- OpenAI embeddings, ``POST /v1/embeddings``: input lists are merged; each caller
  gets its own items re-indexed from 0 and a share of the usage.
- KServe v1 / TF-Serving, ``POST /v1/models/{name}:predict`` with ``"instances"``.

``parse_call`` returns ``None`` for anything that must pass through unchanged
(other paths, streaming, binary or compressed bodies, columnar ``"inputs"``,
shapes that differ inside one request) and raises ``MalformedInput`` for a body
that can never be valid, so that it fails alone, before it joins a batch.
``merge_calls`` builds the body of one upstream call; ``split_response`` turns
the upstream's answer into one body per call, or raises ``SplitError``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = [
    "Call",
    "MalformedInput",
    "Protocol",
    "SplitError",
    "merge_calls",
    "parse_call",
    "split_response",
]

_V2_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
_V1_PATH = re.compile(r"^/v1/models/[^/:]+(/versions/[^/:]+|/labels/[^/:]+)?:predict$")
_OPENAI_PATH = re.compile(r"^(/openai)?/v1/embeddings$")

_INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOAT_TYPES = {"FP16", "FP32", "FP64", "BF16"}
_V2_TYPES = _INT_TYPES | _FLOAT_TYPES | {"BOOL", "BYTES"}


class MalformedInput(ValueError):
    """The body of one call can never be valid; it fails alone with 400."""


class SplitError(ValueError):
    """The upstream's answer to a batched call cannot be split back by row."""


class Protocol(Enum):
    """The wire protocols the batcher knows how to batch."""

    KSERVE_V2 = "kserve_v2"
    OPENAI_EMBEDDINGS = "openai_embeddings"
    KSERVE_V1 = "kserve_v1"


@dataclass(frozen=True, slots=True, eq=False)
class Call:
    """One validated inference call, ready to join a batch.

    Calls with equal ``key`` can share an upstream call. ``rows`` is the size
    of dimension 0; ``body`` is the original request body, ``doc`` its parsed
    JSON, ``rows_data`` the protocol-specific rows to merge.
    """

    protocol: Protocol
    key: tuple[Any, ...]
    rows: int
    body: bytes
    doc: dict[str, Any]
    rows_data: Any
    weight: int = 1


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


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
    if protocol is None or _not_batchable(headers):
        return None
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedInput(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MalformedInput("body must be a JSON object")
    if doc.get("stream") is True:
        return None
    base_key = (protocol.value, path, query, headers.get("authorization", ""))
    if protocol is Protocol.KSERVE_V2:
        return _parse_v2(base_key, body, doc)
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


def _not_batchable(headers: Mapping[str, str]) -> bool:
    content_type = headers.get("content-type", "application/json").lower()
    return (
        "json" not in content_type
        or "text/event-stream" in headers.get("accept", "").lower()
        or "content-encoding" in headers
        or "inference-header-content-length" in headers
    )


# --- KServe v2 -------------------------------------------------------------------------


def _flatten(data: Any, out: list[Any]) -> None:
    if isinstance(data, list):
        for element in data:
            _flatten(element, out)
    else:
        out.append(data)


def _check_v2_value(datatype: str, value: Any) -> bool:
    if datatype == "BYTES":
        return isinstance(value, str)
    if datatype == "BOOL":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if datatype in _INT_TYPES:
        return isinstance(value, int)
    return isinstance(value, int | float) and math.isfinite(value)


def _parse_v2_input(tensor: Any) -> tuple[str, str, list[int], list[Any]]:
    if not isinstance(tensor, dict):
        raise MalformedInput("each input must be an object")
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(name, str) or not name:
        raise MalformedInput("input name must be a non-empty string")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise MalformedInput(f"input {name!r}: shape must be a list of non-negative integers")
    if datatype not in _V2_TYPES:
        raise MalformedInput(f"input {name!r}: unknown datatype {datatype!r}")
    flat: list[Any] = []
    _flatten(tensor.get("data"), flat)
    if len(flat) != math.prod(shape):
        raise MalformedInput(
            f"input {name!r}: {len(flat)} values do not fill shape {shape} ({math.prod(shape)})"
        )
    if not all(_check_v2_value(datatype, value) for value in flat):
        raise MalformedInput(f"input {name!r}: data does not match datatype {datatype}")
    return name, datatype, shape, flat


def _parse_v2(base_key: tuple[Any, ...], body: bytes, doc: dict[str, Any]) -> Call | None:
    tensors = doc.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise MalformedInput("inputs must be a non-empty list")
    parsed = [_parse_v2_input(tensor) for tensor in tensors]
    names = [name for name, _, _, _ in parsed]
    if len(set(names)) != len(names):
        raise MalformedInput("input names must be unique")
    if any("parameters" in tensor for tensor in tensors):
        return None  # binary_data_size and friends: the upstream's business
    shapes = [shape for _, _, shape, _ in parsed]
    if any(len(shape) == 0 for shape in shapes) or len({shape[0] for shape in shapes}) != 1:
        return None  # no common batch dimension
    rows = shapes[0][0]
    if rows == 0:
        return None
    signature = tuple(sorted((name, dt, tuple(shape[1:])) for name, dt, shape, _ in parsed))
    rest = {k: v for k, v in doc.items() if k not in ("inputs", "id")}
    key = (*base_key, _canon(rest), signature)
    rows_data = {name: (dt, shape[1:], flat) for name, dt, shape, flat in parsed}
    return Call(Protocol.KSERVE_V2, key, rows, body, doc, rows_data)


def _merge_v2(calls: Sequence[Call]) -> dict[str, Any]:
    first = calls[0]
    merged = {k: v for k, v in first.doc.items() if k not in ("inputs", "id")}
    total = sum(call.rows for call in calls)
    inputs = []
    for name, (datatype, trailing, _) in first.rows_data.items():
        data: list[Any] = []
        for call in calls:
            data.extend(call.rows_data[name][2])
        inputs.append(
            {"name": name, "shape": [total, *trailing], "datatype": datatype, "data": data}
        )
    merged["inputs"] = inputs
    return merged


def _split_v2(doc: dict[str, Any], calls: Sequence[Call]) -> list[dict[str, Any]]:
    outputs = doc.get("outputs")
    if not isinstance(outputs, list):
        raise SplitError("response has no outputs list")
    total = sum(call.rows for call in calls)
    flats = []
    for output in outputs:
        shape = output.get("shape") if isinstance(output, dict) else None
        if not isinstance(shape, list) or not shape or shape[0] != total:
            raise SplitError(f"output shape {shape!r} does not start with {total} rows")
        flat: list[Any] = []
        _flatten(output.get("data"), flat)
        if len(flat) != math.prod(shape):
            raise SplitError("output data does not fill its shape")
        flats.append((output, math.prod(shape[1:]), flat))
    parts = []
    offset = 0
    for call in calls:
        part = {k: v for k, v in doc.items() if k not in ("outputs", "id")}
        if "id" in call.doc:
            part["id"] = call.doc["id"]
        part["outputs"] = [
            {
                **output,
                "shape": [call.rows, *output["shape"][1:]],
                "data": flat[offset * size : (offset + call.rows) * size],
            }
            for output, size, flat in flats
        ]
        parts.append(part)
        offset += call.rows
    return parts


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
        (*base_key, _canon(rest)),
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
    key = (*base_key, _canon(rest), signature[2])
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


def merge_calls(calls: Sequence[Call]) -> bytes:
    """Return the body of one upstream call serving all ``calls`` (which share a key).

    A single call is sent with its original body, byte for byte.
    """
    if len(calls) == 1:
        return calls[0].body
    first = calls[0]
    merged: dict[str, Any]
    if first.protocol is Protocol.KSERVE_V2:
        merged = _merge_v2(calls)
    elif first.protocol is Protocol.OPENAI_EMBEDDINGS:
        merged = {**first.doc, "input": [row for call in calls for row in call.rows_data]}
    else:
        merged = {**first.doc, "instances": [row for call in calls for row in call.rows_data]}
    return json.dumps(merged, separators=(",", ":")).encode()


def split_response(body: bytes, calls: Sequence[Call]) -> list[bytes]:
    """Return one response body per call, in order, from a batched call's answer.

    Raises ``SplitError`` when the answer is not JSON or does not have one row
    per merged row. Each part carries only its own rows (and, for KServe v2,
    its own request id).
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SplitError("response is not JSON") from exc
    if not isinstance(doc, dict):
        raise SplitError("response is not a JSON object")
    protocol = calls[0].protocol
    if protocol is Protocol.KSERVE_V2:
        parts = _split_v2(doc, calls)
    elif protocol is Protocol.OPENAI_EMBEDDINGS:
        parts = _split_openai(doc, calls)
    else:
        parts = _split_v1(doc, calls)
    return [json.dumps(part, separators=(",", ":")).encode() for part in parts]
