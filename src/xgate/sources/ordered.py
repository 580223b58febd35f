"""Objects kept in name order for a source that changes one object at a time (etcd).

A revision hands the control plane every object in name order. Copying 10,000 routes into a new tuple for each
change touched every route's reference count: 0.2-0.3 ms of a change's way to Envoy, although the fast path
only reads the changed routes. Here the objects live in blocks, each an immutable tuple replaced when it
changes, and a revision's sequence shares the blocks: about 80 references at 10,000 routes.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")

# A block splits in two above this many objects; blocks that empty are dropped.
BLOCK = 128


class Chain(Sequence[T]):
    """An immutable sequence made of tuples; equal to a tuple or a Chain with the same items."""

    __slots__ = ("_flat", "_len", "_parts")

    def __init__(self, parts: tuple[tuple[T, ...], ...] = ()) -> None:
        self._parts = parts
        self._len = sum(map(len, parts))
        self._flat: tuple[T, ...] | None = None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[T]:
        return itertools.chain.from_iterable(self._parts)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[T, ...]: ...
    def __getitem__(self, index: int | slice) -> T | tuple[T, ...]:
        return self.as_tuple()[index]

    def as_tuple(self) -> tuple[T, ...]:
        """The items as one tuple, built on first use."""
        if self._flat is None:
            self._flat = tuple(self)
        return self._flat

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Chain):
            return self.as_tuple() == other.as_tuple()
        if isinstance(other, tuple):
            return self.as_tuple() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.as_tuple())

    def __repr__(self) -> str:
        return f"Chain({self.as_tuple()!r})"


class _Block(Generic[T]):
    __slots__ = ("names", "objects")

    def __init__(self, names: list[str], objects: tuple[T, ...]) -> None:
        self.names = names
        self.objects = objects


def _first_name(block: _Block[Any]) -> str:
    return block.names[0]


class NameOrdered(Generic[T]):
    """Objects by unique name, in name order; `snapshot()` is cheap and does not change afterwards."""

    def __init__(self) -> None:
        self._blocks: list[_Block[T]] = []

    def snapshot(self) -> Chain[T]:
        return Chain(tuple(block.objects for block in self._blocks))

    def set(self, name: str, obj: T) -> None:
        """Add `obj` as `name`, or replace the object of that name."""
        if not self._blocks:
            self._blocks.append(_Block([name], (obj,)))
            return
        index = max(0, bisect.bisect_right(self._blocks, name, key=_first_name) - 1)
        block = self._blocks[index]
        at = bisect.bisect_left(block.names, name)
        objects = block.objects
        if at < len(block.names) and block.names[at] == name:
            block.objects = (*objects[:at], obj, *objects[at + 1 :])
            return
        block.names.insert(at, name)
        block.objects = (*objects[:at], obj, *objects[at:])
        if len(block.names) > BLOCK:
            half = len(block.names) // 2
            self._blocks[index : index + 1] = [
                _Block(block.names[:half], block.objects[:half]),
                _Block(block.names[half:], block.objects[half:]),
            ]

    def delete(self, name: str) -> bool:
        """Remove `name`; False if there was none."""
        index = bisect.bisect_right(self._blocks, name, key=_first_name) - 1
        if index < 0:
            return False
        block = self._blocks[index]
        at = bisect.bisect_left(block.names, name)
        if at == len(block.names) or block.names[at] != name:
            return False
        del block.names[at]
        if block.names:
            block.objects = (*block.objects[:at], *block.objects[at + 1 :])
        else:
            del self._blocks[index]
        return True
