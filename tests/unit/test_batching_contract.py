"""The batching policy's contract between the admin API, the domain and the batcher.

The control plane defines the policy's defaults and ranges once, in
``controlplane.domain.policy`` (``Batching`` and ``BATCHING_RANGES``), and the
API schema takes them from there. The batcher (``filters.batcher``) may import
nothing from ``controlplane``, so it keeps its own copy; these tests check that
the copies agree: the same fields, the same defaults, and every value the API
accepts reaches a running batcher unchanged, while every value just outside a
range is refused by both (400 at the API, ``PolicyError`` in the batcher).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
from pydantic import ValidationError

from controlplane.api.policy_schemas import BatchingBody, VersionPolicyBody
from controlplane.domain.policy import BATCHING_RANGES, Batching
from filters.batcher import BatchingPolicy, PolicyError, policy_from_json

FIELDS = [f.name for f in dataclasses.fields(BatchingPolicy)]
NUMERIC = [name for name in FIELDS if name != "enabled"]


def _served(body: dict[str, Any] | None) -> Any:
    """The ``batching`` field a batcher reads after ``body`` was PUT as a version policy:
    API schema, then the domain value, then its stored JSON document."""
    policy = VersionPolicyBody.model_validate({"batching": body}).to_policy()
    document = dataclasses.asdict(policy)["batching"]
    return json.loads(json.dumps(document, allow_nan=False))


def _outside(value: float, *, below: bool) -> float:
    """The nearest value of the same kind just outside a range ending at ``value``."""
    if isinstance(value, int):
        return value - 1 if below else value + 1
    return math.nextafter(value, -math.inf if below else math.inf)


def test_the_three_have_the_same_fields() -> None:
    assert set(BatchingBody.model_fields) == set(FIELDS)
    assert {f.name for f in dataclasses.fields(Batching)} == set(FIELDS)
    assert set(BATCHING_RANGES) == set(NUMERIC)


def test_the_three_have_the_same_defaults() -> None:
    batcher = dataclasses.asdict(BatchingPolicy())
    assert BatchingBody().model_dump() == batcher
    assert dataclasses.asdict(Batching()) == batcher
    # An empty object in the API means "batching with every default".
    assert policy_from_json(_served({})) == BatchingPolicy()


def test_null_means_off_everywhere() -> None:
    assert not VersionPolicyBody.model_validate({"batching": None}).to_policy().batching_enabled()
    assert _served(None) is None
    assert policy_from_json(None).enabled is False
    assert policy_from_json(_served({"enabled": False})).enabled is False


@pytest.mark.parametrize("name", NUMERIC)
def test_every_value_in_range_reaches_the_batcher_unchanged(name: str) -> None:
    low, high = BATCHING_RANGES[name]
    default = getattr(BatchingPolicy(), name)
    assert low <= default <= high
    for value in (low, high, default):
        policy = policy_from_json(_served({name: value}))
        assert getattr(policy, name) == value


@pytest.mark.parametrize("name", NUMERIC)
def test_values_just_outside_a_range_are_refused_by_both(name: str) -> None:
    low, high = BATCHING_RANGES[name]
    for value in (_outside(low, below=True), _outside(high, below=False)):
        with pytest.raises(ValidationError):
            BatchingBody.model_validate({name: value})
        with pytest.raises(PolicyError):
            policy_from_json({name: value})


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers_are_refused_by_both(name: str, value: float) -> None:
    with pytest.raises(ValidationError):
        BatchingBody.model_validate({name: value})
    with pytest.raises(PolicyError):
        policy_from_json({name: value})
