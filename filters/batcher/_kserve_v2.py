"""Open Inference Protocol / KServe v2 infer calls: parse, merge, split, in JSON or binary.

Inputs are concatenated along dimension 0 when names, datatypes and trailing
shapes match; outputs are split back by row.
https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/inference_rest.md

The binary tensor data extension (``_tensors``) is understood on both sides:

- An input is sent as JSON ``data`` or as ``binary_data_size`` bytes after the
  JSON header. Calls batch only with calls that send each input in the same
  form, so the merged input is a plain concatenation (of values, or of bytes).
- Each caller receives each output in the form it asked for: ``binary_data``
  on the requested output, else the request's ``binary_data_output``, else
  JSON. Callers that differ only in that share a batch: the merged call asks
  the upstream for binary wherever one of them wants binary, and every part
  is converted to its caller's form.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import _tensors
from ._call import Call, MalformedInput, Message, Protocol, SplitError, canon, flatten

__all__ = ["framing_headers", "merge_v2", "parse_v2", "split_v2"]

_INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOAT_TYPES = {"FP16", "FP32", "FP64", "BF16"}
_V2_TYPES = _INT_TYPES | _FLOAT_TYPES | {"BOOL", "BYTES"}
_SIZE = "binary_data_size"


@dataclass(frozen=True, slots=True)
class Tensor:
    """One input tensor: its datatype, full shape, and JSON ``values`` or ``raw`` bytes."""

    datatype: str
    shape: tuple[int, ...]
    values: list[Any] | None = None
    raw: bytes | None = None


@dataclass(frozen=True, slots=True)
class V2Rows:
    """A v2 call's inputs (in request order) and the form it wants each output in."""

    inputs: dict[str, Tensor]
    binary_default: bool
    binary_outputs: dict[str, bool]

    def wants_binary(self, output: str) -> bool:
        """Whether this caller asked for ``output`` as binary data."""
        return self.binary_outputs.get(output, self.binary_default)


def framing_headers(header_length: int | None) -> dict[str, str]:
    """Return the headers of a body whose JSON header is ``header_length`` bytes (or all)."""
    if header_length is None:
        return {"Content-Type": "application/json"}
    return {
        "Content-Type": "application/octet-stream",
        _tensors.HEADER_LENGTH: str(header_length),
    }


# --- parse -------------------------------------------------------------------------------


def parse_v2(base_key: tuple[Any, ...], body: bytes, header_length: int | None) -> Call | None:
    """Return the call, ``None`` to pass it through, or raise ``MalformedInput``."""
    header = body if header_length is None else body[:header_length]
    doc = _load_object(header)
    tensors = doc.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise MalformedInput("inputs must be a non-empty list")
    if not all(isinstance(tensor, dict) for tensor in tensors):
        raise MalformedInput("each input must be an object")
    if any(_foreign_parameters(tensor.get("parameters")) for tensor in tensors):
        return None  # shared memory and friends: the upstream's business
    sizes = [_binary_size(tensor) for tensor in tensors]
    chunks = iter(_binary_chunks(body, header_length, sizes))
    inputs: dict[str, Tensor] = {}
    for tensor, size in zip(tensors, sizes, strict=True):
        name, parsed = _parse_input(tensor, None if size is None else next(chunks))
        if name in inputs:
            raise MalformedInput("input names must be unique")
        inputs[name] = parsed
    forms = _output_forms(doc)
    if forms is None:
        return None
    shapes = [t.shape for t in inputs.values()]
    if any(len(shape) == 0 for shape in shapes) or len({shape[0] for shape in shapes}) != 1:
        return None  # no common batch dimension
    rows = shapes[0][0]
    if rows == 0:
        return None
    signature = tuple(
        sorted((n, t.datatype, t.shape[1:], t.raw is not None) for n, t in inputs.items())
    )
    key = (*base_key, canon(_shared(doc)), signature)
    return Call(
        Protocol.KSERVE_V2,
        key,
        rows,
        body,
        doc,
        V2Rows(inputs, *forms),
        header_length=header_length,
    )


def _load_object(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedInput(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MalformedInput("body must be a JSON object")
    return doc


def _foreign_parameters(parameters: Any) -> bool:
    if parameters is None:
        return False
    return not isinstance(parameters, dict) or any(k != _SIZE for k in parameters)


def _binary_size(tensor: dict[str, Any]) -> int | None:
    size = (tensor.get("parameters") or {}).get(_SIZE)
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedInput(f"{_SIZE} must be a non-negative integer")
    if "data" in tensor:
        raise MalformedInput(f"an input carries either data or {_SIZE}, not both")
    return size


def _binary_chunks(body: bytes, header_length: int | None, sizes: list[int | None]) -> list[bytes]:
    wanted = [size for size in sizes if size is not None]
    if header_length is None:
        if wanted:
            raise MalformedInput(f"{_SIZE} needs the {_tensors.HEADER_LENGTH} header")
        return []
    try:
        return _tensors.unframe(body, header_length, wanted)[1]
    except _tensors.FramingError as exc:
        raise MalformedInput(str(exc)) from exc


def _check_value(datatype: str, value: Any) -> bool:
    if datatype == "BYTES":
        return isinstance(value, str)
    if datatype == "BOOL":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if datatype in _INT_TYPES:
        return isinstance(value, int)
    return isinstance(value, int | float) and math.isfinite(value)


def _parse_input(tensor: dict[str, Any], raw: bytes | None) -> tuple[str, Tensor]:
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(name, str) or not name:
        raise MalformedInput("input name must be a non-empty string")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise MalformedInput(f"input {name!r}: shape must be a list of non-negative integers")
    if datatype not in _V2_TYPES:
        raise MalformedInput(f"input {name!r}: unknown datatype {datatype!r}")
    count = math.prod(shape)
    if raw is not None:
        try:
            _tensors.element_bounds(datatype, raw, count)
        except ValueError as exc:
            raise MalformedInput(f"input {name!r}: {exc}") from exc
        return name, Tensor(datatype, tuple(shape), raw=raw)
    flat: list[Any] = []
    flatten(tensor.get("data"), flat)
    if len(flat) != count:
        raise MalformedInput(
            f"input {name!r}: {len(flat)} values do not fill shape {shape} ({count})"
        )
    if not all(_check_value(datatype, value) for value in flat):
        raise MalformedInput(f"input {name!r}: data does not match datatype {datatype}")
    return name, Tensor(datatype, tuple(shape), values=flat)


def _output_forms(doc: dict[str, Any]) -> tuple[bool, dict[str, bool]] | None:
    """Return (binary by default, binary per requested output), or ``None`` if unreadable."""
    parameters = doc.get("parameters", {})
    if not isinstance(parameters, dict):
        return None
    default = parameters.get("binary_data_output", False)
    if not isinstance(default, bool):
        return None
    outputs = doc.get("outputs")
    if outputs is None:
        return default, {}
    if not isinstance(outputs, list):
        return None
    per_output = {}
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            return None
        output_parameters = output.get("parameters", {})
        if not isinstance(output_parameters, dict):
            return None
        binary = output_parameters.get("binary_data", default)
        if not isinstance(binary, bool):
            return None
        per_output[output["name"]] = binary
    return default, per_output


def _without(obj: dict[str, Any], *names: str) -> dict[str, Any]:
    """Return ``obj`` without ``names`` in its parameters (and without empty parameters)."""
    copy = dict(obj)
    parameters = {k: v for k, v in (copy.pop("parameters", None) or {}).items() if k not in names}
    if parameters:
        copy["parameters"] = parameters
    return copy


def _shared(doc: dict[str, Any]) -> dict[str, Any]:
    """The request fields every call in a batch shares: no inputs, id, or output forms."""
    shared = _without(
        {k: v for k, v in doc.items() if k not in ("inputs", "id")}, "binary_data_output"
    )
    if isinstance(shared.get("outputs"), list):
        shared["outputs"] = [_without(output, "binary_data") for output in shared["outputs"]]
    return shared


# --- merge -------------------------------------------------------------------------------


def merge_v2(calls: Sequence[Call]) -> Message:
    """Return the one upstream request serving ``calls`` (two or more, with one key)."""
    merged = _shared(calls[0].doc)
    first: V2Rows = calls[0].rows_data
    total = sum(call.rows for call in calls)
    chunks: list[bytes] = []
    inputs = []
    for name, tensor in first.inputs.items():
        parts = [call.rows_data.inputs[name] for call in calls]
        entry: dict[str, Any] = {
            "name": name,
            "shape": [total, *tensor.shape[1:]],
            "datatype": tensor.datatype,
        }
        if tensor.raw is None:
            entry["data"] = [value for part in parts for value in part.values]
        else:
            chunks.append(b"".join(part.raw for part in parts))
            entry["parameters"] = {_SIZE: len(chunks[-1])}
        inputs.append(entry)
    merged["inputs"] = inputs
    forms = [call.rows_data for call in calls]
    if isinstance(merged.get("outputs"), list):
        for output in merged["outputs"]:
            if any(form.wants_binary(output["name"]) for form in forms):
                output["parameters"] = {**output.get("parameters", {}), "binary_data": True}
    elif any(form.binary_default for form in forms):
        merged["parameters"] = {**merged.get("parameters", {}), "binary_data_output": True}
    return _message(merged, chunks)


def _message(doc: dict[str, Any], chunks: list[bytes]) -> Message:
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return Message(header, framing_headers(None))
    body, length = _tensors.frame(header, chunks)
    return Message(body, framing_headers(length))


# --- split -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Output:
    doc: dict[str, Any]
    row_size: int  # elements per row
    values: list[Any] | None
    raw: bytes | None
    bounds: list[int]  # element boundaries in raw

    def values_of(self, start: int, stop: int) -> list[Any]:
        if self.values is not None:
            return self.values[start * self.row_size : stop * self.row_size]
        return _tensors.decode(self.doc["datatype"], self.raw_of(start, stop))

    def raw_of(self, start: int, stop: int) -> bytes:
        if self.raw is None:
            return _tensors.encode(self.doc["datatype"], self.values_of(start, stop))
        return self.raw[self.bounds[start * self.row_size] : self.bounds[stop * self.row_size]]


def split_v2(answer: Message, calls: Sequence[Call]) -> list[Message]:
    """Return one answer per call, each output in the form its caller asked for.

    Raises ``SplitError`` when the answer is unreadable, lacks the batch rows,
    or holds an output that cannot take a caller's form (BYTES that are not
    UTF-8, as JSON).
    """
    total = sum(call.rows for call in calls)
    doc, outputs = _read_outputs(answer, total)
    parts = []
    offset = 0
    for call in calls:
        form: V2Rows = call.rows_data
        part = {k: v for k, v in doc.items() if k not in ("outputs", "id")}
        if "id" in call.doc:
            part["id"] = call.doc["id"]
        entries = []
        chunks: list[bytes] = []
        for output in outputs:
            entry = _without({k: v for k, v in output.doc.items() if k != "data"}, _SIZE)
            entry["shape"] = [call.rows, *output.doc["shape"][1:]]
            try:
                if form.wants_binary(output.doc.get("name", "")):
                    chunks.append(output.raw_of(offset, offset + call.rows))
                    entry["parameters"] = {**entry.get("parameters", {}), _SIZE: len(chunks[-1])}
                else:
                    entry["data"] = output.values_of(offset, offset + call.rows)
            except (ValueError, KeyError) as exc:
                raise SplitError(f"output {entry.get('name')!r}: {exc}") from exc
            entries.append(entry)
        part["outputs"] = entries
        parts.append(_message(part, chunks))
        offset += call.rows
    return parts


def _read_outputs(answer: Message, total: int) -> tuple[dict[str, Any], list[_Output]]:
    raw_length = answer.headers.get(_tensors.HEADER_LENGTH)
    try:
        length = (
            None if raw_length is None else _tensors.header_length(raw_length, len(answer.body))
        )
        doc = json.loads(answer.body if length is None else answer.body[:length])
    except (UnicodeDecodeError, ValueError) as exc:
        raise SplitError(f"response is not readable: {exc}") from exc
    if not isinstance(doc, dict):
        raise SplitError("response is not a JSON object")
    outputs = doc.get("outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise SplitError("response has no outputs list")
    sizes = [_output_size(output) for output in outputs]
    chunks: list[bytes] = []
    if length is not None:
        try:
            chunks = _tensors.unframe(answer.body, length, [s for s in sizes if s is not None])[1]
        except _tensors.FramingError as exc:
            raise SplitError(str(exc)) from exc
    elif any(size is not None for size in sizes):
        raise SplitError(f"binary outputs without the {_tensors.HEADER_LENGTH} header")
    binary = iter(chunks)
    return doc, [
        _read_output(output, None if size is None else next(binary), total)
        for output, size in zip(outputs, sizes, strict=True)
    ]


def _output_size(output: dict[str, Any]) -> int | None:
    parameters = output.get("parameters")
    size = parameters.get(_SIZE) if isinstance(parameters, dict) else None
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise SplitError(f"output {_SIZE} {size!r} is not a size")
    return size


def _read_output(output: dict[str, Any], raw: bytes | None, total: int) -> _Output:
    shape = output.get("shape")
    if not isinstance(shape, list) or not shape or shape[0] != total:
        raise SplitError(f"output shape {shape!r} does not start with {total} rows")
    count = math.prod(shape)
    row_size = math.prod(shape[1:])
    if raw is not None:
        try:
            bounds = _tensors.element_bounds(output.get("datatype", ""), raw, count)
        except ValueError as exc:
            raise SplitError(f"output {output.get('name')!r}: {exc}") from exc
        return _Output(output, row_size, None, raw, bounds)
    flat: list[Any] = []
    flatten(output.get("data"), flat)
    if len(flat) != count:
        raise SplitError("output data does not fill its shape")
    return _Output(output, row_size, flat, None, [])
