"""The binary tensor data extension: framing, element codec, and v2 merge/split in both forms."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from filters.batcher._protocols import (
    Call,
    MalformedInput,
    Message,
    SplitError,
    merge_request,
    parse_call,
    split_answer,
)
from filters.batcher._tensors import (
    HEADER_LENGTH,
    FramingError,
    decode,
    element_bounds,
    encode,
    frame,
    unframe,
)

PATH = "/v2/models/m/infer"


@settings(max_examples=200, deadline=None)
@given(header=st.binary(max_size=64), chunks=st.lists(st.binary(max_size=32), max_size=6))
def test_unframe_inverts_frame(header: bytes, chunks: list[bytes]) -> None:
    body, length = frame(header, chunks)
    assert length == len(header)
    assert unframe(body, length, [len(c) for c in chunks]) == (header, chunks)


@settings(max_examples=100, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=16), min_size=1, max_size=4),
    delta=st.integers(min_value=-3, max_value=3).filter(bool),
)
def test_unframe_rejects_sizes_that_do_not_cover_the_body(chunks: list[bytes], delta: int) -> None:
    body, length = frame(b"{}", chunks)
    sizes = [len(c) for c in chunks]
    sizes[-1] += delta
    with pytest.raises(FramingError):
        unframe(body, length, sizes)


def _float_in(fmt: str) -> st.SearchStrategy[float]:
    """Floats exactly representable in the struct format ``fmt``."""
    width = 32 if fmt == "f" else 16
    return st.floats(width=width, allow_nan=False)


VALUES: dict[str, st.SearchStrategy[Any]] = {
    "BOOL": st.booleans(),
    "INT8": st.integers(-(2**7), 2**7 - 1),
    "INT16": st.integers(-(2**15), 2**15 - 1),
    "INT32": st.integers(-(2**31), 2**31 - 1),
    "INT64": st.integers(-(2**63), 2**63 - 1),
    "UINT8": st.integers(0, 2**8 - 1),
    "UINT16": st.integers(0, 2**16 - 1),
    "UINT32": st.integers(0, 2**32 - 1),
    "UINT64": st.integers(0, 2**64 - 1),
    "FP16": _float_in("e"),
    "FP32": _float_in("f"),
    "FP64": st.floats(allow_nan=False),
    "BF16": st.integers(0, 0xFFFF)
    .map(lambda h: struct.unpack("<f", struct.pack("<I", h << 16))[0])
    .filter(lambda v: not math.isnan(v)),
    "BYTES": st.text(max_size=12),
}


@settings(max_examples=300, deadline=None)
@given(data=st.data(), datatype=st.sampled_from(sorted(VALUES)))
def test_decode_inverts_encode_for_every_datatype(data: st.DataObject, datatype: str) -> None:
    values = data.draw(st.lists(VALUES[datatype], max_size=8))
    raw = encode(datatype, values)
    assert decode(datatype, raw) == values
    bounds = element_bounds(datatype, raw, len(values))
    assert bounds[0] == 0 and bounds[-1] == len(raw) and len(bounds) == len(values) + 1


def test_codec_rejects_what_does_not_fit() -> None:
    with pytest.raises(ValueError):
        encode("INT8", [300])
    with pytest.raises(ValueError):
        encode("FP32", [1e300])
    with pytest.raises(ValueError):
        element_bounds("FP32", b"\0" * 7, 2)
    with pytest.raises(ValueError):
        element_bounds("BYTES", struct.pack("<I", 9) + b"abc", 1)
    with pytest.raises(ValueError):
        decode("BYTES", struct.pack("<I", 1) + b"\xff")  # not UTF-8: no JSON form


# --- v2 calls with binary tensors ---------------------------------------------------------


def binary_request(
    request_id: str,
    rows: list[list[float]],
    *,
    binary_in: bool = True,
    outputs: list[dict[str, Any]] | None = None,
    binary_output: bool | None = None,
) -> tuple[bytes, CIMultiDict[str]]:
    """A request as tritonclient builds it: FP32 input ``x``, binary unless told otherwise."""
    flat = [v for row in rows for v in row]
    tensor: dict[str, Any] = {"name": "x", "shape": [len(rows), len(rows[0])], "datatype": "FP32"}
    raw = struct.pack(f"<{len(flat)}f", *flat)
    if binary_in:
        tensor["parameters"] = {"binary_data_size": len(raw)}
    else:
        tensor["data"] = flat
    doc: dict[str, Any] = {"id": request_id, "inputs": [tensor]}
    if outputs is not None:
        doc["outputs"] = outputs
    if binary_output is not None:
        doc["parameters"] = {"binary_data_output": binary_output}
    header = json.dumps(doc).encode()
    if not binary_in:
        return header, CIMultiDict({"Content-Type": "application/octet-stream"})
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return header + raw, CIMultiDict(headers)


def parsed(body: bytes, headers: CIMultiDict[str]) -> Call:
    call = parse_call("POST", PATH, "", headers, body)
    assert call is not None
    return call


def read_answer(message: Message) -> dict[str, list[Any]]:
    """Return each output's values from a (possibly binary) v2 answer, by output name."""
    length = message.headers.get(HEADER_LENGTH)
    end = len(message.body) if length is None else int(length)
    doc = json.loads(message.body[:end])
    offset = end
    values = {}
    for output in doc["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            values[output["name"]] = output["data"]
        else:
            values[output["name"]] = decode(
                output["datatype"], message.body[offset : offset + size]
            )
            offset += size
    assert offset == len(message.body)
    return values


def model_answer(request: Message) -> Message:
    """An upstream that maps ``x`` to ``y = x`` and honours the request's binary_data_output."""
    length = request.headers.get(HEADER_LENGTH)
    end = len(request.body) if length is None else int(length)
    doc = json.loads(request.body[:end])
    (tensor,) = doc["inputs"]
    values = tensor["data"] if "data" in tensor else decode("FP32", request.body[end:])
    output: dict[str, Any] = {"name": "y", "shape": tensor["shape"], "datatype": "FP32"}
    requested = {o["name"]: o.get("parameters", {}) for o in doc.get("outputs", [])}
    binary = requested.get("y", {}).get(
        "binary_data", doc.get("parameters", {}).get("binary_data_output", False)
    )
    if not binary:
        output["data"] = values
        return Message(json.dumps({"outputs": [output]}).encode(), {})
    raw = encode("FP32", values)
    output["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps({"model_name": "m", "outputs": [output]}).encode()
    return Message(header + raw, {HEADER_LENGTH: str(len(header))})


caller = st.tuples(
    st.integers(min_value=1, max_value=3),  # rows
    st.sampled_from(["none", "default_binary", "listed_binary", "listed_json"]),
)


@settings(max_examples=150, deadline=None)
@given(binary_in=st.booleans(), callers=st.lists(caller, min_size=2, max_size=6))
def test_batched_binary_calls_each_get_their_own_rows_in_their_own_form(
    binary_in: bool, callers: list[tuple[int, str]]
) -> None:
    calls, expected, forms = [], [], []
    for i, (rows, form) in enumerate(callers):
        values = [[float(i * 10 + r), float(-i) - 0.5] for r in range(rows)]
        outputs: list[dict[str, Any]] | None = None
        binary_output = None
        if form == "default_binary":
            binary_output = True
        elif form.startswith("listed"):
            outputs = [{"name": "y", "parameters": {"binary_data": form == "listed_binary"}}]
        body, headers = binary_request(
            f"r{i}", values, binary_in=binary_in, outputs=outputs, binary_output=binary_output
        )
        calls.append(parsed(body, headers))
        expected.append([v for row in values for v in row])
        forms.append(form in ("default_binary", "listed_binary"))
    groups: dict[Any, list[int]] = {}
    for i, call in enumerate(calls):
        groups.setdefault(call.key, []).append(i)
    # Only listing outputs or not splits callers; the form they want never does.
    assert len(groups) <= 2
    for members in groups.values():
        batch = [calls[i] for i in members]
        request = merge_request(batch)
        assert (HEADER_LENGTH in request.headers) == binary_in
        answer = model_answer(request)
        parts = [answer] if len(batch) == 1 else split_answer(answer, batch)
        for i, part in zip(members, parts, strict=True):
            assert read_answer(part) == {"y": expected[i]}
            assert (HEADER_LENGTH in part.headers) == forms[i]
            header_end = int(part.headers.get(HEADER_LENGTH, len(part.body)))
            assert json.loads(part.body[:header_end]).get("id", f"r{i}") == f"r{i}"


def test_single_binary_call_is_sent_byte_for_byte_with_its_framing() -> None:
    body, headers = binary_request("solo", [[1.0, 2.0]])
    request = merge_request([parsed(body, headers)])
    assert request.body == body
    assert request.headers[HEADER_LENGTH] == headers[HEADER_LENGTH]
    assert request.headers["Content-Type"] == "application/octet-stream"


def test_binary_and_json_inputs_do_not_share_a_batch_but_output_forms_do() -> None:
    binary = parsed(*binary_request("a", [[1.0, 2.0]]))
    json_in = parsed(*binary_request("b", [[1.0, 2.0]], binary_in=False))
    wants_binary = parsed(*binary_request("c", [[1.0, 2.0]], binary_output=True))
    assert binary.key != json_in.key
    assert binary.key == wants_binary.key


def _tamper(body: bytes, headers: CIMultiDict[str], **changes: Any) -> tuple[bytes, Any]:
    length = int(headers[HEADER_LENGTH])
    doc = json.loads(body[:length])
    raw = body[length:]
    tensor = doc["inputs"][0]
    if "size" in changes:
        tensor["parameters"]["binary_data_size"] = changes["size"]
    if "data" in changes:
        tensor["data"] = changes["data"]
    raw += changes.get("extra", b"")
    header = json.dumps(doc).encode()
    new_headers = CIMultiDict(headers)
    new_headers[HEADER_LENGTH] = changes.get("length", str(len(header)))
    if changes.get("no_header"):
        del new_headers[HEADER_LENGTH]
    return header + raw, new_headers


@pytest.mark.parametrize(
    "changes",
    [
        {"size": 4},  # fewer bytes than the shape needs, rest left over
        {"size": 12},  # more bytes than the body holds
        {"size": "8"},
        {"extra": b"\0\0\0\0"},  # bytes after the last tensor
        {"data": [1.0, 2.0]},  # both data and binary_data_size
        {"length": "99999"},
        {"length": "-1"},
        {"length": "ten"},
        {"no_header": True},
    ],
)
def test_malformed_binary_requests_fail_alone(changes: dict[str, Any]) -> None:
    body, headers = _tamper(*binary_request("bad", [[1.0, 2.0]]), **changes)
    with pytest.raises(MalformedInput):
        parse_call("POST", PATH, "", headers, body)


def test_binary_split_rejects_answers_that_do_not_line_up() -> None:
    a = parsed(*binary_request("a", [[1.0, 2.0]], binary_output=True))
    b = parsed(*binary_request("b", [[3.0, 4.0]], binary_output=True))
    answer = model_answer(merge_request([a, b]))
    with pytest.raises(SplitError):  # binary outputs without their header length
        split_answer(Message(answer.body, {}), [a, b])
    truncated = Message(answer.body[:-1], answer.headers)
    with pytest.raises(SplitError):
        split_answer(truncated, [a, b])
    header = json.dumps(
        {"outputs": [{"name": "y", "shape": [2, 1], "datatype": "BYTES", "data": ["a", "b"]}]}
    )
    # A JSON caller cannot take BYTES that are not UTF-8: the batch is split instead.
    raw = struct.pack("<I", 1) + b"\xff" + struct.pack("<I", 1) + b"\xfe"
    doc = json.loads(header)
    output = doc["outputs"][0]
    del output["data"]
    output["parameters"] = {"binary_data_size": len(raw)}
    text = json.dumps(doc).encode()
    c = parsed(*binary_request("c", [[1.0]], binary_output=False))
    d = parsed(*binary_request("d", [[2.0]], binary_output=False))
    with pytest.raises(SplitError):
        split_answer(Message(text + raw, {HEADER_LENGTH: str(len(text))}), [c, d])
