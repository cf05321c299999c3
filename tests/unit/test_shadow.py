"""Shadow comparisons, the pure parts: the report format's round trip, body and
numeric comparison, pairing with expiry and caps, and the sampling hash."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from controlplane.api.policy_schemas import ModelPolicyBody, ShadowBody
from controlplane.domain.errors import InvalidInput
from controlplane.domain.policy import (
    DEFAULT_SHADOW_COMPARE_PERCENT,
    DEFAULT_SHADOW_MAX_BODY_BYTES,
    ModelPolicy,
    Shadow,
    model_policy_from_document,
)
from controlplane.domain.shadow import (
    Half,
    body_digest,
    compare,
    decode_report,
    encode_report,
    first_difference,
    numeric_difference,
    numeric_outputs,
)
from controlplane.telemetry.shadow import ShadowPairs
from controlplane.xds.shadow import REPORT_CLUSTER, sampled
from tests.strategies import model_policies


def _half(side: str = "primary", body: object = None, status: int = 200, rid: str = "r1") -> Half:
    raw = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    return Half(
        request_id=rid,
        model="m",
        side="primary" if side == "primary" else "shadow",
        version="v1" if side == "primary" else "v2",
        status=status,
        duration_ms=12.5 if side == "primary" else 20.0,
        body=raw,
    )


halves = st.builds(
    Half,
    request_id=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
    model=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    side=st.sampled_from(["primary", "shadow"]),
    version=st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
    status=st.integers(0, 999),
    duration_ms=st.floats(0, 1e7, allow_nan=False).map(lambda x: round(x, 3)),
    body=st.none() | st.binary(max_size=256),
)


@given(halves)
def test_the_report_format_round_trips(half: Half) -> None:
    assert decode_report(encode_report(half)) == half


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"turnout-shadow/9\nm\nprimary\nv1\nr\n200\n1.0\nnobody\n",
        b"turnout-shadow/1\nm\nsideways\nv1\nr\n200\n1.0\nnobody\n",
        b"turnout-shadow/1\nm\nprimary\nv1\nr\nOK\n1.0\nnobody\n",
        b"turnout-shadow/1\nm\nprimary\nv1\nr\n200\nnan\nnobody\n",
        b"turnout-shadow/1\nm\nprimary\nv1\nr\n200\n1.0\nbody 5\nabc",
        b"turnout-shadow/1\nm\nprimary\nv1\nr\n200\n1.0\nnobody\nextra",
        b"turnout-shadow/1\n\nprimary\nv1\nr\n200\n1.0\nnobody\n",
    ],
)
def test_malformed_reports_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        decode_report(data)


def test_kserve_v2_outputs_max_abs_diff_and_cosine() -> None:
    primary = {"model_name": "m", "outputs": [{"name": "y", "data": [1.0, 2.0, 3.0, 4.0]}]}
    shadow = {"model_name": "n", "outputs": [{"name": "y", "data": [1.0, 2.0, 3.5, 4.0]}]}
    result = compare(_half(body=primary), _half("shadow", body=shadow), keep_bodies=False)
    assert result.status_agree and result.body_agree is False
    assert result.max_abs_diff == 0.5
    expected = (1 + 4 + 10.5 + 16) / (math.sqrt(30) * math.sqrt(1 + 4 + 12.25 + 16))
    assert result.cosine == pytest.approx(expected)
    assert result.diff == "$.outputs[0].data[2] differs"
    assert result.primary_body is None and result.shadow_body is None
    assert not result.agrees


def test_openai_embeddings_compare_every_vector_and_ignore_ids() -> None:
    def answer(vectors: list[list[float]], rid: str) -> dict[str, object]:
        return {
            "object": "list",
            "id": rid,
            "model": rid,
            "data": [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ],
        }

    same = compare(
        _half(body=answer([[1, 0], [0, 1]], "a")),
        _half("shadow", body=answer([[1, 0], [0, 1]], "b")),
        keep_bodies=False,
    )
    assert same.body_agree is True and same.agrees
    assert (same.max_abs_diff, same.cosine) == (0.0, 1.0)
    flipped = compare(
        _half(body=answer([[1, 0]], "a")),
        _half("shadow", body=answer([[-1, 0]], "b")),
        keep_bodies=True,
    )
    assert (flipped.max_abs_diff, flipped.cosine) == (2.0, -1.0)
    assert flipped.diff == "$.data[0].embedding[0]: 1 != -1"
    assert flipped.primary_body is not None and flipped.shadow_body is not None


def test_numeric_outputs_take_nested_tensors_and_refuse_anything_else() -> None:
    assert numeric_outputs({"outputs": [{"data": [[1, 2], [3, 4]]}, {"data": [5]}]}) == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert numeric_outputs({"outputs": [{"data": ["a"]}]}) is None
    assert numeric_outputs({"outputs": [{"data": [True]}]}) is None
    assert numeric_outputs({"choices": []}) is None
    assert numeric_outputs([1, 2]) is None
    assert numeric_difference([1.0], [1.0, 2.0]) is None
    assert numeric_difference([0.0, 0.0], [1.0, 0.0]) == (1.0, None)
    assert numeric_difference([math.inf], [1.0]) is None


def test_status_disagreement_and_bodies_not_read() -> None:
    result = compare(_half(), _half("shadow", status=503), keep_bodies=False)
    assert not result.status_agree and result.body_agree is None
    assert result.diff == "status 200 != 503"
    assert (result.primary_ms, result.shadow_ms) == (12.5, 20.0)
    unread = compare(_half(body={"a": 1}), _half("shadow"), keep_bodies=True)
    assert unread.body_agree is None and unread.agrees


def test_bodies_that_are_not_json_compare_by_bytes() -> None:
    assert compare(_half(body=b"ok"), _half("shadow", body=b"ok"), keep_bodies=False).body_agree
    differ = compare(_half(body=b"ok"), _half("shadow", body=b"{}"), keep_bodies=False)
    assert differ.body_agree is False and differ.diff == "bodies differ (not both JSON)"


def test_first_difference_names_the_path() -> None:
    assert first_difference({"a": [1, 2]}, {"a": [1, 2]}, show_values=True) is None
    assert first_difference({"a": [1]}, {"a": [1, 2]}, show_values=False) == "$.a: length 1 != 2"
    assert first_difference({"a": 1}, {"b": 1}, show_values=False) == "$.a: only in primary"
    assert first_difference({"a": "x"}, {"a": "y"}, show_values=True) == '$.a: "x" != "y"'


def test_pairs_meet_by_request_id_whichever_side_comes_first() -> None:
    pairs = ShadowPairs(max_pending=10, expiry_s=5, clock=lambda: 0.0)
    assert pairs.add(_half("shadow", rid="x")) is None
    assert len(pairs) == 1
    primary, shadow = pairs.add(_half("primary", rid="x")) or (None, None)
    assert primary is not None and shadow is not None
    assert (primary.side, shadow.side) == ("primary", "shadow")
    assert len(pairs) == 0 and pairs.counts.paired == 1
    # The same side twice: the later one waits, no pair.
    assert pairs.add(_half("primary", rid="y")) is None
    assert pairs.add(_half("primary", rid="y")) is None
    assert len(pairs) == 1


def test_pending_halves_expire() -> None:
    now = [0.0]
    pairs = ShadowPairs(max_pending=10, expiry_s=5, clock=lambda: now[0])
    pairs.add(_half("primary", rid="old"))
    now[0] = 3.0
    pairs.add(_half("primary", rid="young"))
    now[0] = 5.0
    assert pairs.add(_half("shadow", rid="old")) is None  # expired: it waits alone now
    assert pairs.counts.expired == 1
    assert pairs.add(_half("shadow", rid="young")) is not None


def test_pending_halves_are_capped_oldest_first() -> None:
    pairs = ShadowPairs(max_pending=3, expiry_s=60, clock=lambda: 0.0)
    for i in range(5):
        pairs.add(_half("primary", rid=f"r{i}"))
    assert len(pairs) == 3 and pairs.counts.evicted == 2
    assert pairs.add(_half("shadow", rid="r0")) is None
    assert pairs.add(_half("shadow", rid="r4")) is not None


def test_sampling_shares_follow_the_percentages() -> None:
    ids = [str(uuid.UUID(int=i * 7919 + 17, version=4)) for i in range(20_000)]
    decisions = [sampled(i, 20, 50) for i in ids]
    mirrored = sum(m for m, _ in decisions) / len(ids)
    compared = sum(c for _, c in decisions) / len(ids)
    # Binomial spread over 20,000 ids: 4 standard deviations is under 0.012.
    assert abs(mirrored - 0.20) < 0.012
    assert abs(compared - 0.10) < 0.012
    assert all(m for m, c in decisions if c)
    assert sampled(ids[0], 100, 100) == (True, True)
    assert sampled(ids[0], 100, 0) == (True, False)


@given(model_policies(versions=("v1", "v2")))
def test_shadow_policies_round_trip_through_documents_and_the_api(policy: ModelPolicy) -> None:
    document = json.loads(json.dumps(asdict(policy)))
    assert model_policy_from_document(document) == policy
    if policy.shadow is not None:
        body = ShadowBody.model_validate(policy.shadow, from_attributes=True)
        assert ModelPolicyBody(shadow=body).to_policy().shadow == policy.shadow


def test_a_shadow_document_from_before_comparisons_still_loads() -> None:
    policy = model_policy_from_document({"shadow": {"version": "v2", "percent": 5.0}})
    assert policy.shadow == Shadow(
        version="v2",
        percent=5.0,
        compare_percent=DEFAULT_SHADOW_COMPARE_PERCENT,
        keep_bodies=False,
        max_body_bytes=DEFAULT_SHADOW_MAX_BODY_BYTES,
    )


def test_reports_go_to_the_bootstrap_cluster_of_the_control_plane() -> None:
    bootstrap = yaml.safe_load((Path(__file__).parents[2] / "envoy" / "bootstrap.yaml").read_text())
    names = [c["name"] for c in bootstrap["static_resources"]["clusters"]]
    assert REPORT_CLUSTER in names


def test_a_half_without_its_body_compares_by_digest() -> None:
    primary = {"model_name": "a", "outputs": [{"data": [1.0, 2.0]}]}
    same = {"outputs": [{"data": [1.0, 2.0]}], "model_name": "b"}
    other = {"model_name": "a", "outputs": [{"data": [1.0, 2.5]}]}
    waited = replace(
        _half("shadow", body=same), body=None, digest=body_digest(json.dumps(same).encode())
    )
    result = compare(_half(body=primary), waited, keep_bodies=False)
    assert result.body_agree is True and result.max_abs_diff is None
    differs = replace(waited, digest=body_digest(json.dumps(other).encode()))
    result = compare(_half(body=primary), differs, keep_bodies=False)
    assert result.body_agree is False and result.diff == "bodies differ"
    assert body_digest(b"not json") != body_digest(b"not json!")
