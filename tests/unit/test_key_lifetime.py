"""Key lifetimes as the CLI and the API take them (``30d``)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.domain.keys import MAX_LIFETIME, parse_lifetime


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("15m", timedelta(minutes=15)),
        ("2w", timedelta(weeks=2)),
        (" 1d ", timedelta(days=1)),
    ],
)
def test_lifetimes_parse(text: str, expected: timedelta) -> None:
    assert parse_lifetime(text) == expected


@pytest.mark.parametrize("text", ["", "d", "30", "0d", "-1d", "1.5d", "30D", "1y", "5000d"])
def test_anything_else_is_refused_with_the_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"30d|ten years"):
        parse_lifetime(text)


@given(st.text(max_size=12))
def test_parse_lifetime_returns_a_positive_bounded_lifetime_or_raises(text: str) -> None:
    try:
        lifetime = parse_lifetime(text)
    except ValueError:
        return
    assert timedelta(0) < lifetime <= MAX_LIFETIME
