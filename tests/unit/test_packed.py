"""The sync loop's packed translation renders exactly what ``translate`` renders."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.domain.state import DesiredState
from controlplane.xds.packed import PackedTranslator
from controlplane.xds.resources import PUSH_ORDER
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.tracing import TracingOptions
from controlplane.xds.translate import DnsOptions, ListenerOptions, endpoint_zones, translate
from tests.strategies import desired_states

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LISTENER = ListenerOptions(port=10001)
TRACED = ListenerOptions(port=10001, tracing=TracingOptions("collector", 4317, 5.0))
RESOLVED = ListenerOptions(
    port=10001, dns=DnsOptions(refresh_rate_s=0.5, respect_ttl=False, resolvers=("10.0.0.53:53",))
)


def _assert_same_bytes(
    translator: PackedTranslator,
    state: DesiredState,
    zone: str | None,
    listener: ListenerOptions = LISTENER,
) -> None:
    plain = Snapshot.from_resources(state.revision, translate(state, listener, zone))
    packed = Snapshot.from_packed(state.revision, translator.translate(state, listener, zone))
    for type_url in PUSH_ORDER:
        assert packed.versions[type_url] == plain.versions[type_url], type_url
        assert dict(packed.resource_versions[type_url]) == dict(plain.resource_versions[type_url])
        assert list(packed.resources[type_url]) == list(plain.resources[type_url])
        for name, resource in plain.resources[type_url].items():
            packed_resource = packed.resources[type_url][name]
            assert packed_resource.SerializeToString() == resource.SerializeToString(), name


@PROPERTY
@given(state=desired_states(), data=st.data())
def test_packed_translation_has_the_same_bytes_as_translate(
    state: DesiredState, data: st.DataObject
) -> None:
    zone = data.draw(st.sampled_from([*endpoint_zones(state), "elsewhere"]), label="local zone")
    listener = data.draw(st.sampled_from([LISTENER, TRACED, RESOLVED]), label="listener")
    translator = PackedTranslator()
    for _ in range(2):  # cold, then memoised
        _assert_same_bytes(translator, state, None, listener)
        _assert_same_bytes(translator, state, zone, listener)


@PROPERTY
@given(state=desired_states(), data=st.data())
def test_a_zones_resources_are_the_translation_for_that_zone(
    state: DesiredState, data: st.DataObject
) -> None:
    # What the sync loop publishes for a zone: the zone-free translation with the
    # endpoints, and the clusters that hold their own, seen from that zone.
    zone = data.draw(st.sampled_from([*endpoint_zones(state), "elsewhere"]), label="local zone")
    translator = PackedTranslator()
    resources = translator.translate(state, RESOLVED)
    expected = Snapshot.from_packed(state.revision, translator.translate(state, RESOLVED, zone))
    got = Snapshot.from_packed(
        state.revision, translator.for_zone(state, RESOLVED, zone, resources)
    )
    for type_url in PUSH_ORDER:
        assert got.versions[type_url] == expected.versions[type_url], type_url


@PROPERTY
@given(before=desired_states(), after=desired_states())
def test_a_translator_that_rendered_another_state_renders_the_next_one_exactly(
    before: DesiredState, after: DesiredState
) -> None:
    translator = PackedTranslator()
    translator.translate(before, LISTENER)
    translator.rotate()
    _assert_same_bytes(translator, after, None)
    translator.rotate()
    translator.rotate()  # what "before" left is forgotten by now
    _assert_same_bytes(translator, after, None)
