"""Values kept in key order in blocks, for tables of thousands where one change touches one entry.

Two places need it, for the same reason: touching every one of 10,000 entries per change (a refcount, a join of
bytes) cost 0.2-0.4 ms in a running control plane, whose caches are cold by the next change, though far less
in a loop. The route table (translate/routetable.py) joins each block's route bytes once until the block
changes; the etcd source hands each revision its routes as a Chain sharing the blocks' tuples, about 160
references at 10,000 routes instead of 10,000.

A block's values are an immutable tuple, replaced when the block changes, so what was handed out before
never changes; `cache` holds something derived from them and is cleared with every change.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

K = TypeVar("K", bound="SupportsRichComparison")
V = TypeVar("V")
T = TypeVar("T")

# Entries per block, up to twice that before a block splits; a block that empties is dropped.
BLOCK = 64


class Block(Generic[K, V]):
    __slots__ = ("cache", "keys", "values")

    def __init__(self, keys: list[K], values: tuple[V, ...]) -> None:
        self.keys = keys
        self.values = values
        self.cache: Any = None  # derived from `values` by the owner; None after every change


def _first_key(block: Block[Any, Any]) -> Any:
    return block.keys[0]


class SortedBlocks(Generic[K, V]):
    """Unique keys in order, each with a value."""

    def __init__(self) -> None:
        self.blocks: list[Block[K, V]] = []

    def __iter__(self) -> Iterator[K]:
        """The keys, in order."""
        return itertools.chain.from_iterable(block.keys for block in self.blocks)

    def snapshot(self) -> Chain[V]:
        """The values in key order, as they are now (later changes copy their block instead)."""
        return Chain(tuple(block.values for block in self.blocks))

    def set(self, key: K, value: V) -> None:
        """Add `key` with `value`, or replace the value of `key`."""
        if not self.blocks:
            self.blocks.append(Block([key], (value,)))
            return
        index = max(0, self._block_of(key))
        block = self.blocks[index]
        at = bisect.bisect_left(block.keys, key)
        values = block.values
        block.cache = None
        if at < len(block.keys) and block.keys[at] == key:
            block.values = (*values[:at], value, *values[at + 1 :])
            return
        block.keys.insert(at, key)
        block.values = (*values[:at], value, *values[at:])
        if len(block.keys) > 2 * BLOCK:
            self.blocks.insert(index + 1, Block(block.keys[BLOCK:], block.values[BLOCK:]))
            del block.keys[BLOCK:]
            block.values = block.values[:BLOCK]

    def delete(self, key: K) -> bool:
        """Remove `key`; False if it was not there."""
        index = self._block_of(key)
        if index < 0:
            return False
        block = self.blocks[index]
        at = bisect.bisect_left(block.keys, key)
        if at == len(block.keys) or block.keys[at] != key:
            return False
        del block.keys[at]
        block.cache = None
        if block.keys:
            block.values = (*block.values[:at], *block.values[at + 1 :])
        else:
            del self.blocks[index]
        return True

    def _block_of(self, key: K) -> int:
        """The last block starting at or before `key` (-1: before the first block)."""
        return bisect.bisect_right(self.blocks, key, key=_first_key) - 1


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
