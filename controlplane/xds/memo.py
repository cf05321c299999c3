"""Memoised pure functions whose memory follows the working set.

An entry lives while it is used: ``rotate()`` starts a new generation, and an
entry not used since the previous rotation is dropped at the next one. The
sync loop rotates once per published revision, so the memo holds at most the
resources of the last two revisions, however much the state churns.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, ParamSpec, TypeVar

__all__ = ["Memoised", "memoised"]

P = ParamSpec("P")
R = TypeVar("R")


class Memoised(Generic[P, R]):
    """A pure function with a two-generation memo keyed by its (hashable) arguments."""

    def __init__(self, function: Callable[P, R]) -> None:
        self._function = function
        self._current: dict[tuple[Hashable, ...], R] = {}
        self._previous: dict[tuple[Hashable, ...], R] = {}
        self.__doc__ = function.__doc__

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

    def clear(self) -> None:
        """Forget everything."""
        self._current.clear()
        self._previous.clear()

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)


def memoised(function: Callable[P, R]) -> Memoised[P, R]:
    """Decorate a pure function with a :class:`Memoised` memo."""
    return Memoised(function)
