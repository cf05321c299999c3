"""The names a model version goes by in Envoy: its cluster, and the name its
statistics carry.

Envoy's statistics use dots as separators, so a version's stats go by
``stat_name`` (every character other than letters, digits, ``_`` and ``-``
replaced by ``_``); the telemetry maps those names back through
:func:`stat_names`.
"""

from __future__ import annotations

import re

from controlplane.domain.state import DesiredState

__all__ = ["cluster_name", "stat_name", "stat_names"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def cluster_name(model: str, version: str) -> str:
    """Return the Envoy cluster (and EDS service) name of a model version."""
    return f"{model}/{version}"


def stat_name(cluster: str) -> str:
    """Return the name the statistics of ``cluster`` carry in Envoy (its
    ``alt_stat_name``): the cluster name with no dots or slashes."""
    return _UNSAFE.sub("_", cluster)


def stat_names(state: DesiredState) -> dict[str, tuple[str, str]]:
    """Return ``{stat name: (model, version)}`` for every version of ``state``.

    Two versions whose names differ only in characters that ``stat_name``
    replaces share one stat name; the first in model order keeps it.
    """
    names: dict[str, tuple[str, str]] = {}
    for model in state.models:
        for version in model.versions:
            names.setdefault(
                stat_name(cluster_name(model.name, version.name)), (model.name, version.name)
            )
    return names
