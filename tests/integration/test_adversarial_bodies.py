"""Adversarial request bodies never get a 500 from the admin API, and every
change request, accepted or refused, leaves exactly one audit event.

Bodies: deep nesting (far past Python's recursion limit), huge numbers (beyond
float range, beyond int-parsing limits), invalid UTF-8 and duplicate keys, sent
to every kind of mutating route. Refusals carry an error code the README lists.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import hypothesis
import pytest
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st

from controlplane.runtime import ControlPlane

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
# The error codes the README lists in its "Errors are ..." paragraph.
LISTED_CODES = set(
    re.findall(r"`([a-z_]+)`", README[README.index("Errors are `{") :].split("\n\n")[0])
)

ROUTES = [
    ("POST", "/v1/models"),
    ("PATCH", "/v1/models/m"),
    ("POST", "/v1/models/m/versions"),
    ("PATCH", "/v1/models/m/versions/v1"),
    ("PUT", "/v1/models/m/traffic"),
    ("PUT", "/v1/models/m/policy"),
    ("PUT", "/v1/models/m/versions/v1/policy"),
    ("POST", "/v1/keys"),
    ("POST", "/v1/tenants"),
    ("PATCH", "/v1/tenants/t"),
]


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


_huge_number = st.sampled_from(
    [
        "1" * 5000,  # beyond Python's int-parsing digit limit
        "9" * 4000,  # parses, but fits no column
        "-" + "9" * 400,
        "1e999",  # inf
        "-1e999",
        "1e-999",
        "123456789012345678901234567890",
        "1.7976931348623157e309",
    ]
)


@st.composite
def _with_number(draw: st.DrawFn) -> bytes:
    number = draw(_huge_number)
    template = draw(
        st.sampled_from(
            [
                '{"weights": {"v1": %s}}',
                '{"name": "x", "protocol": "http", "description": %s}',
                '{"version": "v2", "endpoints": [{"address": "127.0.0.1", "port": %s}]}',
                '{"endpoints": [{"address": "127.0.0.1", "port": 1, "batcher_port": %s}]}',
                '{"timeouts": {"request_timeout_ms": %s}}',
                '{"batching": {"enabled": true, "max_batch_size": %s}}',
                '{"name": "t2", "models": [], "rate_limit": {"requests_per_second": %s,'
                ' "burst": 1}}',
                '{"rate_limit": {"requests_per_second": 1, "burst": %s}}',
                '{"name": "k", "role": "viewer", "expires_in": %s}',
                "%s",
            ]
        )
    )
    return (template % number).encode()


_invalid_utf8 = st.sampled_from(
    [
        b'{"name": "\xff\xfe", "protocol": "http"}',
        b'{"weights": {"v1\xc3\x28": 100}}',
        b"\xed\xa0\x80",  # an encoded surrogate
        b'{"name": "ok", "protocol": "http", "description": "\x80"}',
        b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
        b'{"name": "\\ud800", "protocol": "http"}',  # a lone surrogate escape
    ]
) | st.binary(min_size=1, max_size=64)

_duplicate_keys = st.sampled_from(
    [
        b'{"name": "d1", "name": "d2", "protocol": "http", "protocol": "bogus"}',
        b'{"weights": {"v1": 100}, "weights": {"v1": 50}}',
        b'{"weights": {"v1": 60, "v1": 100}}',
        b'{"version": "v2", "version": "v3", "endpoints": [], "endpoints": '
        b'[{"address": "127.0.0.1", "port": 9}]}',
        b'{"name": "k", "role": "admin", "role": "viewer"}',
    ]
)

_bodies = st.one_of(
    st.builds(
        _nested,
        st.sampled_from([1_000, 5_000, 10_000, 100_000]),
        st.sampled_from(["list", "object"]),
    ),
    _with_number(),
    _invalid_utf8,
    _duplicate_keys,
)


def _newest_event(client: httpx.Client) -> dict[str, object] | None:
    items = client.get("/v1/audit/events", params={"limit": 1}).json()["items"]
    return items[0] if items else None


def _fuzz(base_url: str, key: str) -> list[int]:
    statuses: list[int] = []
    with httpx.Client(
        base_url=base_url, timeout=30, headers={"authorization": f"Bearer {key}"}
    ) as client:
        # Something for the routes to act on.
        client.post("/v1/models", json={"name": "m", "protocol": "http"}).raise_for_status()
        client.post(
            "/v1/models/m/versions",
            json={"version": "v1", "endpoints": [{"address": "127.0.0.1", "port": 9001}]},
        ).raise_for_status()
        client.post(
            "/v1/tenants",
            json={"name": "t", "models": [], "rate_limit": {"requests_per_second": 1, "burst": 1}},
        ).raise_for_status()

        @hypothesis.settings(
            max_examples=60,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(route=st.sampled_from(ROUTES), body=_bodies)
        def check(route: tuple[str, str], body: bytes) -> None:
            before = _newest_event(client)
            method, path = route
            response = client.request(
                method, path, content=body, headers={"content-type": "application/json"}
            )
            statuses.append(response.status_code)
            assert response.status_code < 500, (route, body[:200], response.text[:500])
            assert response.headers["content-type"].startswith("application/json")
            if response.status_code >= 400:
                error = response.json()["error"]
                assert error in LISTED_CODES, (error, LISTED_CODES)
            after = _newest_event(client)
            assert after is not None
            assert before is None or after["id"] == int(str(before["id"])) + 1, (before, after)
            assert after["request_id"] == response.headers["x-request-id"]
            assert after["status_code"] == response.status_code

        check()
    return statuses


@pytest.mark.timeout(240)
async def test_adversarial_bodies_never_get_500_and_are_audited_once(
    control_plane: ControlPlane, admin_key: str
) -> None:
    assert {"validation_error", "bad_request"} <= LISTED_CODES, LISTED_CODES
    statuses = await asyncio.to_thread(
        _fuzz, f"http://127.0.0.1:{control_plane.api_port}", admin_key
    )
    assert len(statuses) >= 60
    assert {400, 422} <= set(statuses), sorted(set(statuses))


def test_the_bodies_really_are_adversarial() -> None:
    # Deep nesting defeats json.loads; the numbers defeat int parsing or float range.
    with pytest.raises(RecursionError):
        json.loads(_nested(100_000, "list"))
    with pytest.raises(ValueError, match="digits"):
        json.loads("1" * 5000)
    assert json.loads("1e999") == float("inf")
