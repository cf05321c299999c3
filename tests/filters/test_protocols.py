"""Unit tests of the pure merge/split functions, the policy and the latency model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict

from filters.batcher import BatchingPolicy, PolicyError, policy_from_json
from filters.batcher._latency import LatencyModel
from filters.batcher._protocols import (
    Call,
    MalformedInput,
    Protocol,
    SplitError,
    merge_calls,
    parse_call,
    split_response,
)

JSON = CIMultiDict({"Content-Type": "application/json"})


def parse(path: str, doc: Any, headers: CIMultiDict[str] = JSON, method: str = "POST") -> Call:
    call = parse_call(method, path, "", headers, json.dumps(doc).encode())
    assert call is not None
    return call


def maybe(path: str, doc: Any, headers: CIMultiDict[str] = JSON) -> Call | None:
    return parse_call("POST", path, "", headers, json.dumps(doc).encode())


def v2(request_id: str, rows: list[list[int]], name: str = "x") -> dict[str, Any]:
    return {
        "id": request_id,
        "inputs": [
            {
                "name": name,
                "shape": [len(rows), len(rows[0])],
                "datatype": "INT32",
                "data": [v for r in rows for v in r],
            }
        ],
    }


def test_v2_merge_concatenates_rows_and_split_returns_each_its_own() -> None:
    a = parse("/v2/models/m/infer", v2("a", [[1, 2]]))
    b = parse("/v2/models/m/infer", v2("b", [[3, 4], [5, 6]]))
    assert a.key == b.key
    merged = json.loads(merge_calls([a, b]))
    assert merged["inputs"] == [
        {"name": "x", "shape": [3, 2], "datatype": "INT32", "data": [1, 2, 3, 4, 5, 6]}
    ]
    assert "id" not in merged
    answer = {
        "model_name": "m",
        "outputs": [
            {"name": "y", "shape": [3, 2], "datatype": "INT32", "data": [[1, 2], [3, 4], [5, 6]]}
        ],
    }
    first, second = (json.loads(p) for p in split_response(json.dumps(answer).encode(), [a, b]))
    assert first["id"] == "a" and second["id"] == "b"
    assert first["outputs"][0]["shape"] == [1, 2] and first["outputs"][0]["data"] == [1, 2]
    assert second["outputs"][0]["shape"] == [2, 2]
    assert second["outputs"][0]["data"] == [3, 4, 5, 6]
    assert first["model_name"] == "m"


def test_v2_keys_differ_when_trailing_shape_datatype_or_model_differs() -> None:
    base = parse("/v2/models/m/infer", v2("a", [[1, 2]])).key
    assert parse("/v2/models/m/infer", v2("b", [[1, 2, 3]])).key != base
    assert parse("/v2/models/other/infer", v2("c", [[1, 2]])).key != base
    assert parse("/v2/models/m/infer", v2("d", [[1, 2]], name="z")).key != base
    auth = CIMultiDict({"Content-Type": "application/json", "Authorization": "Bearer k"})
    assert parse("/v2/models/m/infer", v2("e", [[1, 2]]), auth).key != base


@pytest.mark.parametrize(
    "doc",
    [
        {"inputs": []},
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [1, 2, 3]}]},
        {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": ["a"]}]},
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}]},
        {"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]},
        {"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}]},
        [1, 2],
    ],
)
def test_v2_malformed_bodies_are_rejected(doc: Any) -> None:
    with pytest.raises(MalformedInput):
        maybe("/v2/models/m/infer", doc)


def test_not_json_is_malformed() -> None:
    with pytest.raises(MalformedInput):
        parse_call("POST", "/v1/embeddings", "", JSON, b"{not json")


def test_v2_without_common_batch_dimension_passes_through() -> None:
    doc = {
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]},
            {"name": "b", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]},
        ]
    }
    assert maybe("/v2/models/m/infer", doc) is None


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/v2/models/m/infer", JSON),
        ("POST", "/v2/models/m/ready", JSON),
        ("POST", "/v1/chat/completions", JSON),
        ("POST", "/v1/embeddings", CIMultiDict({"Content-Type": "application/octet-stream"})),
        ("POST", "/v1/models/m:predict", CIMultiDict({"Inference-Header-Content-Length": "10"})),
        ("POST", "/v1/embeddings", CIMultiDict({"Accept": "text/event-stream"})),
        ("POST", "/v1/embeddings", CIMultiDict({"Content-Encoding": "gzip"})),
    ],
)
def test_unbatchable_requests_pass_through(
    method: str, path: str, headers: CIMultiDict[str]
) -> None:
    body = json.dumps(v2("a", [[1]])).encode()
    assert parse_call(method, path, "", headers, body) is None


def test_streaming_and_columnar_and_ragged_pass_through() -> None:
    assert maybe("/v1/embeddings", {"input": ["a"], "stream": True}) is None
    assert maybe("/v1/models/m:predict", {"inputs": {"x": [1, 2]}}) is None
    assert maybe("/v1/models/m:predict", {"instances": [[1, 2], [1, 2, 3]]}) is None


def test_openai_merge_and_split_reindex_and_share_usage() -> None:
    a = parse("/v1/embeddings", {"model": "e", "input": "hello"})
    b = parse("/v1/embeddings", {"model": "e", "input": ["a b c", "hello world!"]})
    assert a.rows == 1 and b.rows == 2 and a.key == b.key
    assert json.loads(merge_calls([a, b]))["input"] == ["hello", "a b c", "hello world!"]
    answer = {
        "object": "list",
        "model": "e",
        # out of order on purpose: the split must follow "index", not position
        "data": [{"object": "embedding", "index": i, "embedding": [float(i)]} for i in (2, 0, 1)],
        "usage": {"prompt_tokens": 21, "total_tokens": 21},
    }
    first, second = (json.loads(p) for p in split_response(json.dumps(answer).encode(), [a, b]))
    assert first["data"] == [{"object": "embedding", "index": 0, "embedding": [0.0]}]
    assert [d["index"] for d in second["data"]] == [0, 1]
    assert [d["embedding"] for d in second["data"]] == [[1.0], [2.0]]
    assert first["usage"]["prompt_tokens"] + second["usage"]["prompt_tokens"] == 21
    assert first["usage"]["total_tokens"] + second["usage"]["total_tokens"] == 21
    assert first["usage"]["prompt_tokens"] < second["usage"]["prompt_tokens"]


def test_openai_token_inputs_and_key_fields() -> None:
    tokens = parse("/v1/embeddings", {"model": "e", "input": [1, 2, 3]})
    assert tokens.rows == 1
    many = parse("/v1/embeddings", {"model": "e", "input": [[1, 2], [3]]})
    assert many.rows == 2
    other = parse("/v1/embeddings", {"model": "e", "input": "x", "dimensions": 8})
    assert other.key != tokens.key
    for bad in ({"input": []}, {"input": 3}, {"input": ["a", 1]}, {"input": "a", "model": 1}):
        with pytest.raises(MalformedInput):
            maybe("/v1/embeddings", bad)


def test_openai_split_rejects_wrong_count() -> None:
    a = parse("/v1/embeddings", {"input": ["a", "b"]})
    answer = {"data": [{"index": 0, "embedding": [1.0]}]}
    with pytest.raises(SplitError):
        split_response(json.dumps(answer).encode(), [a])


def test_v1_merge_and_split_by_instance() -> None:
    a = parse("/v1/models/m:predict", {"instances": [[1, 2]]})
    b = parse("/v1/models/m:predict", {"instances": [[3, 4], [5, 6]]})
    c = parse("/v1/models/m:predict", {"instances": [[3, 4, 5]]})
    assert a.protocol is Protocol.KSERVE_V1 and a.key == b.key != c.key
    assert json.loads(merge_calls([a, b]))["instances"] == [[1, 2], [3, 4], [5, 6]]
    answer = {"predictions": [10, 20, 30], "model_version": "7"}
    first, second = (json.loads(p) for p in split_response(json.dumps(answer).encode(), [a, b]))
    assert first == {"predictions": [10], "model_version": "7"}
    assert second == {"predictions": [20, 30], "model_version": "7"}
    with pytest.raises(SplitError):
        split_response(b'{"predictions": [1]}', [a, b])
    with pytest.raises(MalformedInput):
        maybe("/v1/models/m:predict", {"instances": []})


def test_single_call_is_sent_byte_for_byte() -> None:
    body = b'{"id": "x",  "inputs": [{"name":"x","shape":[1],"datatype":"FP32","data":[1.5]}]}'
    call = parse_call("POST", "/v2/models/m/infer", "", JSON, body)
    assert call is not None
    assert merge_calls([call]) == body


def test_v2_split_rejects_outputs_without_the_batch_rows() -> None:
    a = parse("/v2/models/m/infer", v2("a", [[1]]))
    b = parse("/v2/models/m/infer", v2("b", [[2]]))
    answer = {"outputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": [0.5]}]}
    with pytest.raises(SplitError):
        split_response(json.dumps(answer).encode(), [a, b])
    with pytest.raises(SplitError):
        split_response(b"not json", [a, b])


def test_policy_validation_and_json() -> None:
    assert BatchingPolicy().max_batch_size == 32
    for bad in (
        {"max_batch_size": 0},
        {"max_queue": 0},
        {"max_queue_delay_ms": -1},
        {"slo_ms": float("nan")},
        {"enabled": "yes"},
        {"max_batch_size": 2.5},
    ):
        with pytest.raises(PolicyError):
            BatchingPolicy(**bad)
    policy = policy_from_json({"enabled": True, "max_batch_size": 8, "slo_ms": 50})
    assert policy == BatchingPolicy(max_batch_size=8, slo_ms=50)
    assert policy_from_json(None, base=policy) == BatchingPolicy(
        enabled=False, max_batch_size=8, slo_ms=50
    )
    with pytest.raises(PolicyError):
        policy_from_json({"max_batch_size": "big"})
    with pytest.raises(PolicyError):
        policy_from_json([1])


def test_latency_model_learns_affine_cost() -> None:
    model = LatencyModel()
    assert model.predict(10) == 0.0
    for n in (1, 4, 8, 16, 32) * 20:
        model.observe(n, 0.020 + 0.0005 * n)
    a, b = model.coefficients()
    assert a == pytest.approx(0.020, rel=0.05)
    assert b == pytest.approx(0.0005, rel=0.05)
    assert model.predict(32) == pytest.approx(0.036, rel=0.05)


def test_latency_model_with_one_size_predicts_flat() -> None:
    model = LatencyModel()
    for _ in range(10):
        model.observe(1, 0.010)
    assert model.predict(1) == pytest.approx(0.010, rel=0.01)
    assert model.predict(32) == pytest.approx(0.010, rel=0.01)
