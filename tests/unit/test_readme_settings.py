"""The README's settings table lists every setting, under its variable name."""

from __future__ import annotations

import re
from pathlib import Path

from controlplane.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    table = README[README.index("| variable |") :].split("\n\n")[0]
    listed = set(re.findall(r"`(TURNOUT_[A-Z0-9_]+)`", table))
    expected = {f"TURNOUT_{name.upper()}" for name in Settings.model_fields}
    assert expected == listed, (expected - listed, listed - expected)


def test_the_readme_names_one_key_variable() -> None:
    assert "TURNOUT_API_KEY" in README
    assert not re.search(r"TURNOUT_KEY\b", README)
