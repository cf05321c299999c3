"""The one codec round-trips every state, and a state diff is empty exactly when
Envoy's resources are identical (property tests over generated states)."""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.domain.documents import (
    decode_access,
    decode_model,
    decode_state,
    digest_of,
    encode_access,
    encode_model,
    encode_state,
)
from controlplane.domain.state import DesiredState
from controlplane.services.revisions import state_diff
from controlplane.xds.translate import translate
from tests.strategies import desired_states

EMPTY_DIFF = {
    "added": [],
    "removed": [],
    "changed": {},
    "tenants": {"added": [], "removed": [], "changed": {}},
    "key_set_changed": False,
}


def _through_json(document: object) -> object:
    return json.loads(json.dumps(document))


def _wire(state: DesiredState) -> dict[str, dict[str, bytes]]:
    return {
        type_url: {name: m.SerializeToString(deterministic=True) for name, m in by_name.items()}
        for type_url, by_name in translate(state).items()
    }


@settings(max_examples=60, deadline=None)
@given(desired_states())
def test_documents_round_trip_every_state(state: DesiredState) -> None:
    assert decode_state(_through_json(encode_state(state))) == state  # type: ignore[arg-type]
    for model in state.models:
        document = _through_json(encode_model(model))
        assert decode_model(document) == model  # type: ignore[arg-type]
        assert digest_of(document) == digest_of(encode_model(model))
    access = _through_json(encode_access(state.tenants, state.jwks))
    assert decode_access(access) == (state.tenants, state.jwks)  # type: ignore[arg-type]


def _variants(state: DesiredState) -> st.SearchStrategy[DesiredState]:
    """The state itself, its traffic half, one model or tenant fewer, or another state."""
    options = [st.just(state), st.just(replace(state, revision=state.revision + 1))]
    if state.models:
        options.append(st.just(replace(state, models=state.models[1:])))
    if state.tenants:
        options.append(st.just(replace(state, tenants=state.tenants[1:])))
    options.append(desired_states())
    return st.one_of(options)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_an_empty_state_diff_means_identical_envoy_resources(data: st.DataObject) -> None:
    before = data.draw(desired_states())
    after = data.draw(_variants(before))
    same_state = state_diff(before, after) == EMPTY_DIFF
    same_resources = _wire(before) == _wire(after)
    assert same_state == same_resources, state_diff(before, after)
