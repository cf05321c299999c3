"""Containment: a resource that Envoy rejects holds back its model, nothing else.

Envoy rejects (NACKs) a whole response of one type, and a proxy that has not
accepted the current endpoints never gets the current routes (make before
break), so one bad resource would otherwise freeze every later change for
every model. Instead, the model whose resources were rejected stays at its
last accepted config and every other model moves on at the new revision:

1. Every published snapshot is remembered (the last few) with the model specs
   it was rendered from. When a proxy holds the whole of a snapshot (every
   type ACKed at its versions), those specs are *accepted*.
2. On a NACK, the offending models are, in this order: the models whose
   resources the error message names (Envoy names clusters and listeners it
   failed to add, not the ClusterLoadAssignment it failed to parse); else
   the models that changed since the last accepted snapshot, when that is one
   model; else those models are all held back as suspects and released half
   at a time (a bisection: a half that is accepted is cleared, a half that is
   rejected again is split again) until the culprit is alone.
3. A held model is rendered from its last accepted spec (left out when it has
   none). It is released as soon as its desired spec changes (the fix is then
   tried) or it is deleted; a spec that was rejected is not sent again.

Holds are global to this replica (every proxy gets the same resources, so
what one Envoy rejects the others would too). This module is pure logic; the
sync loop owns one :class:`Containment` and feeds it the proxies' answers.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from controlplane.domain.clock import utcnow
from controlplane.domain.state import DesiredState, ModelSpec
from controlplane.xds.resources import CLUSTER, ENDPOINT, PUSH_ORDER, ROUTE, SHORT_NAMES
from controlplane.xds.snapshot import Snapshot

__all__ = ["Containment", "Hold"]

# Enough for every snapshot a proxy can still answer for: the current ones and
# those a slow proxy was sent a few revisions ago (one per zone per revision).
_REMEMBERED = 64
_NAME_CHAR = r"A-Za-z0-9._\-"


@dataclass(frozen=True, slots=True)
class Hold:
    """A model held back at its last accepted config because Envoy rejected ``spec``.

    ``resources`` are the names of type ``type_url`` (cluster and endpoint names,
    or the route configuration) that the rejected spec changed; ``confirmed`` is
    False while the model is one of several suspects awaiting its trial.
    """

    model: str
    spec: ModelSpec
    type_url: str
    resources: tuple[str, ...]
    reason: str
    node: str
    since: datetime
    confirmed: bool

    def as_dict(self) -> dict[str, object]:
        """Return this hold as a JSON-compatible document for the admin API."""
        return {
            "model": self.model,
            "type": SHORT_NAMES[self.type_url],
            "resources": list(self.resources),
            "reason": self.reason,
            "node": self.node,
            "since": self.since.isoformat(),
            "confirmed": self.confirmed,
        }


def _key(snapshot: Snapshot) -> tuple[int, tuple[str, ...]]:
    return snapshot.revision, tuple(snapshot.versions[t] for t in PUSH_ORDER)


def model_of(type_url: str, name: str) -> str | None:
    """Return the model a resource belongs to (clusters and their endpoints are
    named ``model/version``), or None for a shared one (listener, routes)."""
    if type_url in (CLUSTER, ENDPOINT) and "/" in name:
        return name.split("/", 1)[0]
    return None


def _mentions(message: str, name: str, suffix: str = "") -> bool:
    pattern = rf"(?<![{_NAME_CHAR}/]){re.escape(name)}{suffix}(?![{_NAME_CHAR}])"
    return re.search(pattern, message) is not None


class Containment:
    """Which models are held back, and the specs Envoy last accepted.

    ``generation`` grows on every change to the holds: the owner republishes
    (with :meth:`apply`) when it moved. Not thread-safe; one event loop uses it.
    """

    def __init__(self) -> None:
        self._published: OrderedDict[tuple[int, tuple[str, ...]], Mapping[str, ModelSpec]] = (
            OrderedDict()
        )
        self._accepted: dict[str, ModelSpec] = {}
        self._accepted_snapshot: Snapshot | None = None
        self._held: dict[str, Hold] = {}
        self._queue: list[str] = []  # suspects awaiting their trial, in order
        self._trial: dict[str, ModelSpec] = {}  # released suspects, until accepted
        self.generation = 0

    def holds(self) -> list[Hold]:
        """Return the current holds, by model name."""
        return [self._held[name] for name in sorted(self._held)]

    def apply(self, state: DesiredState) -> DesiredState:
        """Return ``state`` with every held model at its last accepted spec (or left
        out when it has none). A hold whose model changed or went away is released."""
        for name, hold in list(self._held.items()):
            if state.model(name) != hold.spec:
                self._release(name)
        if not self._held:
            return state
        return state.with_models(
            state.revision, {name: self._accepted.get(name) for name in self._held}
        )

    def published(self, snapshot: Snapshot, state: DesiredState) -> None:
        """Remember that ``snapshot`` was rendered from ``state`` (as :meth:`apply` gave it)."""
        self._published[_key(snapshot)] = {model.name: model for model in state.models}
        self._published.move_to_end(_key(snapshot))
        while len(self._published) > _REMEMBERED:
            self._published.popitem(last=False)

    def accepted(self, snapshot: Snapshot) -> bool:
        """A proxy holds all of ``snapshot``; return whether the holds changed."""
        models = self._published.get(_key(snapshot))
        if models is None:
            return False
        self._accepted = dict(models)
        self._accepted_snapshot = snapshot
        changed = False
        for name, spec in list(self._trial.items()):
            if models.get(name) == spec:
                del self._trial[name]  # its trial passed
        if not self._trial and self._queue:
            # Release the first half of the suspects; the rest wait for their turn.
            half = self._queue[: (len(self._queue) + 1) // 2]
            del self._queue[: len(half)]
            for name in half:
                hold = self._held.pop(name, None)
                if hold is not None:
                    self._trial[name] = hold.spec
            changed = bool(half)
        if changed:
            self.generation += 1
        return changed

    def rejected(
        self, snapshot: Snapshot | None, type_url: str, error: str, node: str
    ) -> list[Hold]:
        """A proxy rejected ``type_url`` of ``snapshot``; hold back the offending models
        and return the new holds (none when they cannot be told apart from the rest)."""
        if snapshot is None:
            return []
        models = self._published.get(_key(snapshot))
        if models is None:
            return []  # superseded long ago: its successors were sent since
        suspects = sorted(self._named(snapshot, type_url, error, models)) or sorted(
            name for name, spec in models.items() if self._accepted.get(name) != spec
        )
        if not suspects or all(
            name in self._held and self._held[name].spec == models[name] for name in suspects
        ):
            return []  # nothing new to hold (another proxy said the same)
        confirmed = len(suspects) == 1
        holds = [
            Hold(
                model=name,
                spec=models[name],
                type_url=type_url,
                resources=self._changed_resources(snapshot, type_url, name),
                reason=error[:1000],
                node=node,
                since=utcnow(),
                confirmed=confirmed,
            )
            for name in suspects
        ]
        for hold in holds:
            self._trial.pop(hold.model, None)
            if hold.model in self._queue:
                self._queue.remove(hold.model)
            self._held[hold.model] = hold
        if not confirmed:
            self._queue[:0] = suspects
        self.generation += 1
        return holds

    def _release(self, name: str) -> None:
        self._held.pop(name, None)
        self._trial.pop(name, None)
        if name in self._queue:
            self._queue.remove(name)
        self.generation += 1

    @staticmethod
    def _named(
        snapshot: Snapshot, type_url: str, error: str, models: Mapping[str, ModelSpec]
    ) -> set[str]:
        """The models whose resources (or, for routes, route names) ``error`` names."""
        named: set[str] = set()
        for name in snapshot.resources[type_url]:
            model = model_of(type_url, name)
            if model is not None and model in models and _mentions(error, name):
                named.add(model)
        if type_url == ROUTE:
            # Route names start with the model's name: "m/path/...", "m/header".
            named.update(m for m in models if _mentions(error, m, suffix="/(?:path|header)"))
        return named

    def _changed_resources(self, snapshot: Snapshot, type_url: str, model: str) -> tuple[str, ...]:
        """The resources of ``type_url`` that ``snapshot`` changed for ``model`` since
        the last accepted snapshot (for a shared type: the shared resource itself)."""
        accepted = self._accepted_snapshot
        before = accepted.resource_versions[type_url] if accepted is not None else {}
        now = snapshot.resource_versions[type_url]
        names: Iterable[str] = now
        if type_url in (CLUSTER, ENDPOINT):
            names = (n for n in now if model_of(type_url, n) == model)
        return tuple(sorted(n for n in names if before.get(n) != now[n]))
