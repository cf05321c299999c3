"""What would change in Envoy: a diff of two translated resource sets."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import Message

from controlplane.xds.resources import PUSH_ORDER, SHORT_NAMES

__all__ = ["resource_diff"]


def resource_diff(
    before: Mapping[str, Mapping[str, Message]], after: Mapping[str, Mapping[str, Message]]
) -> dict[str, dict[str, list[str]]]:
    """Return, per resource type, the names added, removed and changed.

    Types with no change are left out, so an empty dict means "Envoy sees no
    difference".
    """
    diff: dict[str, dict[str, list[str]]] = {}
    for type_url in PUSH_ORDER:
        old, new = before.get(type_url, {}), after.get(type_url, {})
        changed = sorted(
            name
            for name in set(old) & set(new)
            if old[name].SerializeToString(deterministic=True)
            != new[name].SerializeToString(deterministic=True)
        )
        entry = {
            "added": sorted(set(new) - set(old)),
            "removed": sorted(set(old) - set(new)),
            "changed": changed,
        }
        if any(entry.values()):
            diff[SHORT_NAMES[type_url]] = entry
    return diff
