"""A memo whose memory follows the working set, owned by the object that uses it.

An entry lives while it is used: ``rotate()`` starts a new generation, and an
entry not used since the previous rotation is dropped at the next one. The
translator that owns the memos rotates them once per published revision, so
they hold at most the resources of the last two revisions, however much the
state churns. There is no module-level memo: each lives and dies with its
owner, and two owners never share entries.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, ParamSpec, TypeVar

__all__ = ["Memoised"]

P = ParamSpec("P")
R = TypeVar("R")


class Memoised(Generic[P, R]):
    """A pure function with a two-generation memo keyed by its (hashable) arguments.

    Keys are the argument values themselves (compared by equality), never
    object identities, so an equal value built anew finds its entry.
    """

    def __init__(self, function: Callable[P, R]) -> None:
        self._function = function
        self._current: dict[tuple[Hashable, ...], R] = {}
        self._previous: dict[tuple[Hashable, ...], R] = {}

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if kwargs:
            raise TypeError("memoised functions take positional arguments only")
        key: tuple[Hashable, ...] = args
        try:
            return self._current[key]
        except KeyError:
            pass
        if key in self._previous:
            value = self._previous.pop(key)
        else:
            value = self._function(*args, **kwargs)
        self._current[key] = value
        return value

    def rotate(self) -> None:
        """Start a new generation; entries unused since the last rotation go."""
        self._previous = self._current
        self._current = {}

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)
