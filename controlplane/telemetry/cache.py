"""Answers computed from the traffic window, kept for a while.

The summary of every model and the data-plane series of ``/metrics`` walk
every series of the window: thousands of versions take hundreds of
milliseconds and megabytes of output. They are computed at most once per
``max_age_s`` and per slot of the window (whichever ends first) and served
from that copy in between: an answer is at most that old, and never spans
two slots.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from controlplane.telemetry.window import TrafficWindow

__all__ = ["WindowCache"]


class WindowCache:
    """Bytes computed from ``window``, by key; ``max_age_s`` 0 computes every call."""

    def __init__(self, window: TrafficWindow, max_age_s: float) -> None:
        self._window = window
        self._max_age_s = max_age_s
        self._entries: dict[Hashable, tuple[int, float, bytes]] = {}
        self.computed = 0

    def get(self, key: Hashable, compute: Callable[[], bytes]) -> bytes:
        """Return the copy of ``key``, computing it when there is none this slot
        or it is older than ``max_age_s``."""
        slot, now = self._window.slot_index(), self._window.now()
        entry = self._entries.get(key)
        if entry is not None and entry[0] == slot and now - entry[1] < self._max_age_s:
            return entry[2]
        value = compute()
        self.computed += 1
        if self._max_age_s > 0:
            # Only the current slot's copies are worth keeping.
            self._entries = {k: e for k, e in self._entries.items() if e[0] == slot}
            self._entries[key] = (slot, now, value)
        return value
