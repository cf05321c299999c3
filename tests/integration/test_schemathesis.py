"""A bounded schemathesis run against the running admin API, as an admin.

Every operation in the served OpenAPI spec gets up to 20 generated requests;
no response may be a 5xx, and every response must match the spec (status
code documented, content type and body schema).
"""

from __future__ import annotations

import asyncio

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from controlplane.runtime import ControlPlane

MAX_EXAMPLES = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _fuzz(base_url: str, key: str) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers)
    failures: list[str] = []
    operations = 0
    calls: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @hypothesis.settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)
            calls.append(response.status_code)

        try:
            check()
        except Exception as exc:  # collect every operation's failure, not only the first
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:2000])
    assert operations >= 18
    assert len(calls) >= operations * 5, calls  # it really sent requests
    assert {200, 201, 422} <= set(calls), sorted(set(calls))
    return failures


@pytest.mark.timeout(180)
# One bounded run is enough, and the schema does not depend on the database.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_admin_api_conforms_to_its_schema(
    control_plane: ControlPlane, admin_key: str, database_url: str
) -> None:
    base_url = f"http://127.0.0.1:{control_plane.api_port}"
    failures = await asyncio.to_thread(_fuzz, base_url, admin_key)
    assert not failures, "\n\n".join(failures)
