"""The models manifest maps to the domain's models and back, through the JSON the
API carries and the YAML `turnout export` writes."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from pydantic import ValidationError

from controlplane.api.manifest_schemas import ApplyIn, Manifest, ManifestModel
from controlplane.cli.manifest import format_plan
from controlplane.domain.state import DesiredState
from tests.strategies import desired_states

PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(state=desired_states())
def test_every_model_survives_the_manifest_and_its_yaml(state: DesiredState) -> None:
    manifest = Manifest(models=[ManifestModel.from_spec(m) for m in state.models])
    text = yaml.safe_dump(manifest.model_dump(mode="json"), sort_keys=False)
    back = Manifest.model_validate(yaml.safe_load(text))
    assert tuple(m.to_spec() for m in back.models) == state.models
    # What the apply endpoint takes is what the export endpoint gives.
    assert ApplyIn.model_validate(manifest.model_dump(mode="json")).models == manifest.models


def _model(**fields: object) -> dict[str, object]:
    return {
        "name": "m",
        "protocol": "http",
        "versions": [
            {"name": "v1", "endpoints": [{"address": "10.0.0.1", "port": 8000}]},
            {"name": "v2", "endpoints": [{"address": "sentiment-v2.ml.svc", "port": 8000}]},
        ],
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"traffic": {"v1": 50, "v3": 50}}, "does not list"),
        ({"traffic": {"v1": 90}}, "add up to 100"),
        ({"traffic": {"v1": 110, "v2": -10}}, "negative"),
        ({"versions": [{"name": "v1"}, {"name": "v1"}]}, "more than once"),
        ({"versions": [{"name": "v1", "endpoints": [{"address": "a_b", "port": 1}]}]}, "DNS"),
        ({"replicas": 3}, "Extra inputs"),
    ],
)
def test_a_manifest_model_that_breaks_a_rule_says_which(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        ManifestModel.model_validate(_model(**fields))


def test_models_listed_twice_are_refused() -> None:
    with pytest.raises(ValidationError, match="more than once"):
        Manifest.model_validate({"models": [_model(), _model()]})


def test_left_out_traffic_keeps_the_stored_weights_and_a_new_model_starts_on_its_first() -> None:
    model = ManifestModel.model_validate(_model())
    assert model.to_spec({"v1": 30, "v2": 70}).weights == (("v1", 30), ("v2", 70))
    assert model.to_spec(None).weights == (("v1", 100),)
    assert model.to_spec({"v1": 100}).weights == (("v1", 100),)


def test_the_plan_names_each_model_and_what_changes_in_it() -> None:
    v1 = {"name": "v1", "endpoints": [], "policy": {}}
    plan = {
        "revision": 9,
        "state": {
            "added": ["new"],
            "removed": ["old"],
            "changed": {
                "m": {
                    "before": {"versions": [v1], "weights": [["v1", 100]], "policy": {}},
                    "after": {
                        "versions": [v1, {**v1, "name": "v2"}],
                        "weights": [["v1", 100]],
                        "policy": {},
                    },
                }
            },
        },
        "resources": {"clusters": {"added": ["m/v2", "new/v1"], "removed": [], "changed": []}},
    }
    assert format_plan(plan) == (
        "plan:\n  + model new\n  ~ model m: +v2\n  - model old\nEnvoy resources: clusters 2 added\n"
    )
    assert "no changes" in format_plan({"revision": None, "state": {}, "resources": {}})
