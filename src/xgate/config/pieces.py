"""Read a config document piece by piece, its top-level entries and list items, so a save re-reads only what changed.

A 10,000-route file is 740 KB of YAML: parsing it whole took ~70 ms and validating every object ~200 ms, for a
save that usually changes one route. Cut at the lines where YAML's own structure starts a new entry, each piece
parses on its own to exactly what it is inside the document, and a piece whose text did not change is not
parsed (nor validated) again (ObjectCache keeps the results; load.parse_document reads the pieces).

Only the plain layout is split: a block mapping at the top (`key:` at column 0, each key once), the sections
`listeners`, `upstreams` and `routes` as block lists (`- ` items at one indentation). Anything else gives None
and the caller parses the whole text, as before: directives and document markers, tabs or stray lines at the
indentation of the items, lone CR line breaks, and aliases (`*name`: an alias to another piece's anchor fails
alone anyway, but YAML's bound on alias expansion is per document, and each piece would get its own). A piece
cut wrongly cannot pass unnoticed: its own parse then fails (an unterminated quote or bracket) or gives other
than one item, and the caller parses the whole text instead (see load.parse_document).

`resplit` goes further for a save: it compares the text with the last one and cuts again only the stretch of
items where they differ (load.parse_change splices those items into the last revision's lists).
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import TYPE_CHECKING, Any

import yaml_rs
from pydantic import BaseModel

from xgate.config.compact import Compactor

if TYPE_CHECKING:
    from xgate.config.load import ConfigSet

SECTIONS = ("listeners", "upstreams", "routes")
# Every pattern starts with the line break before the line it looks at: re then skips ahead to each "\n" at C
# speed (a `^` in MULTILINE mode is tried at every character: 3-4 times slower on 740 KB). The text is
# searched with a "\n" in front, so that a match at offset `at` is a line starting at `at` in the text.
_END = r"[ \t\n]|\r\n|\r?\Z"  # what may follow the `-` of a list item
_EOL = rf"(?={_END})"
# A line starting at column 0 that is neither blank nor a comment: a top-level key, or an item of a list
# written at column 0.
_TOP = re.compile(r"\n[^ \t\r\n#][^\n]*")
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*):(?:[ \t]+([^\n]*))?\r?")
_ITEM_AT_ZERO = re.compile(rf"\n-{_EOL}")
_FIRST_ITEM = re.compile(rf"\n( *)-{_EOL}")  # the first item of a block list gives the items' indentation
_CONTENT = re.compile(r"\n[ \t]*[^ \t\r\n#]")  # a line with something other than a comment
# An alias: `*` where a node may start (after a space, a flow indicator or at a line start) and a name after it.
# Also matches some plain text ("a *b"): that only costs a whole parse.
_ALIAS = re.compile(r"[\n \t,\[{]\*[^ \t\r\n,\[\]{}]")


@dataclass(frozen=True)
class ItemList:
    """The items of a block list: each item's text after its `-`, up to and with the line break before the next
    item or top-level line (an item's whole text is `" " * indent + "-" + text`), and where they are."""

    indent: int
    texts: list[str]
    start: int = 0  # the offset of the first item in the document
    end: int = 0  # the offset where the list ends (the next top-level line, or the end)


@dataclass
class Layout:
    """The pieces of one document, in document order."""

    # Top-level entries other than block-list sections: (key, the entry's text from its key line to the next).
    entries: list[tuple[str, str]] = field(default_factory=list)
    lists: dict[str, ItemList] = field(default_factory=dict)  # block-list sections
    order: list[str] = field(default_factory=list)  # the top-level keys in document order


@dataclass(frozen=True)
class Resplit:
    """A document cut again where it changed: in list `section`, the items from `first` up to (not with) `stop`
    were replaced with `texts`; `layout` is the new document's."""

    section: str
    first: int
    stop: int
    texts: list[str]
    layout: Layout


def may_alias(text: str) -> bool:
    """Whether `text` may hold an alias (conservative: a `*` that could start one)."""
    return _ALIAS.search("\n" + text) is not None


def split_document(text: str) -> Layout | None:
    """The document's pieces, or None when it is not in the plain layout (see the module's docstring)."""
    if "\r" in text and text.count("\r") != text.count("\r\n"):
        return None  # a lone CR is a line break to YAML, not to this split
    lined = "\n" + text  # offsets in `lined` are one past those in `text`: a match at `at` is a line at `at`
    tops = list(_TOP.finditer(lined))
    if not tops or _CONTENT.search(lined, 0, tops[0].start()):
        return None  # nothing at column 0, or indented content before the first key
    keys = [(index, match) for index, match in enumerate(tops) if not _ITEM_AT_ZERO.match(lined, match.start())]
    if not keys or keys[0][0] != 0:
        return None  # a list item before the first key
    layout = Layout()
    for position, (_, match) in enumerate(keys):
        found = _KEY.fullmatch(lined, match.start() + 1, match.end())
        if found is None or found.group(1) in layout.order:
            return None  # not a plain key (quoted, complex, a directive, `---`), or a key given twice
        key, rest = found.group(1), (found.group(2) or "").strip()
        end = keys[position + 1][1].start() if position + 1 < len(keys) else len(text)
        layout.order.append(key)
        if key in SECTIONS and (not rest or rest.startswith("#")):
            items = _items(lined, match.end(), end + 1)
            if items is None:
                return None
            layout.lists[key] = items
        else:
            layout.entries.append((key, text[match.start() : end]))
    return layout


def _items(lined: str, start: int, end: int) -> ItemList | None:
    """The items of a block list whose key line ends at `start` in `lined` (the list ends at `end`); None when
    the list's lines are not all items, their content or comments."""
    first = _FIRST_ITEM.search(lined, start, end)
    if first is None:  # an empty section: `routes:`
        return ItemList(0, [], end - 1, end - 1) if _CONTENT.search(lined, start, end) is None else None
    if _CONTENT.search(lined, start, first.start()):
        return None  # something other than comments between the key and its first item
    indent = len(first.group(1))
    texts = _cut(lined, first.start(), end, indent)
    return None if texts is None else ItemList(indent, texts, first.start(), end - 1)


def _cut(lined: str, start: int, end: int, indent: int) -> list[str] | None:
    """The items of a stretch of list whose lines start at `start` in `lined` (there, at an item) up to `end`."""
    if _stray(indent).search(lined, start, end):
        return None
    # Every line at the items' indentation now starts an item: split there (a str.split, at C speed), then give
    # each item but the last the line break the split took. The stretch must start at an item: else its first
    # line would not be in any piece (and every offset after it would be off).
    items = lined[start:end].split("\n" + " " * indent + "-")
    return None if items[0] else [item + "\n" for item in items[1:-1]] + items[-1:]


def resplit(old: str, layout: Layout, new: str) -> Resplit | None:
    """`new` cut into pieces knowing `old` and its layout, looking only where they differ: the changed items of
    one list. None when the change is not all inside one block list's items (then cut `new` whole)."""
    if "\r" in new and new.count("\r") != new.count("\r\n"):
        return None
    head, tail = _common_ends(old, new)
    changed_end = len(old) - tail  # the change is old[head:changed_end], new[head:len(new) - tail]
    # The list the change is in. The line break before the line that follows the list must be unchanged (a change
    # there may make that line part of the list, or a comment), unless the list ends the document.
    inside = [
        name
        for name, items in layout.lists.items()
        if items.texts and items.start <= head and (changed_end < items.end or items.end == len(old))
    ]
    if not inside:
        return None
    section, items = inside[0], layout.lists[inside[0]]
    lengths = list(accumulate(map(len, items.texts), initial=0))
    width, count = items.indent + 1, len(items.texts)

    def start(index: int) -> int:  # where item `index` starts (the list's end for index == count)
        return items.start + lengths[index] + index * width

    # The item where the change starts (an insertion just before an item belongs to the one before it), and the
    # first item after it whose line break before is unchanged (else its first line may now be another's).
    first = min(bisect_right(range(count + 1), max(head - 1, items.start), key=start), count) - 1
    stop = max(first + 1, min(bisect_right(range(count + 1), changed_end, key=start), count))
    shift = len(new) - len(old)
    # The stretch starts where item `first` started (before the change, so the same in both) and ends where item
    # `stop` starts, or the list ends (after the change, so the same text).
    texts = _cut("\n" + new, start(first), start(stop) + shift + 1, items.indent)
    if texts is None:
        return None
    lists = dict(layout.lists)
    lists[section] = ItemList(
        items.indent, items.texts[:first] + texts + items.texts[stop:], items.start, items.end + shift
    )
    for name, other in lists.items():
        if other.start > items.start:
            lists[name] = replace(other, start=other.start + shift, end=other.end + shift)
    return Resplit(section, first, stop, texts, Layout(layout.entries, lists, layout.order))


def _common_ends(old: str, new: str) -> tuple[int, int]:
    """The lengths of the longest common start and end of two texts (not overlapping), found by comparing
    blocks at C speed."""
    limit = min(len(old), len(new))
    head = _common(old, new, limit, lambda text, at, size: text[at : at + size])
    tail = _common(old, new, limit - head, lambda text, at, size: text[len(text) - at - size : len(text) - at])
    return head, tail


def _common(old: str, new: str, limit: int, piece: Callable[[str, int, int], str]) -> int:
    """How many characters the two texts share, reading pieces from one end, up to `limit`: pieces grow while
    they match and halve when they do not, so a 740 KB file takes some 40 comparisons."""
    done, size = 0, 4096
    while done < limit:
        size = min(size, limit - done)
        if piece(old, done, size) == piece(new, done, size):
            done += size
            size *= 2
        elif size == 1:
            return done
        else:
            size //= 2
    return done


@functools.cache
def _stray(indent: int) -> re.Pattern[str]:
    """For a list whose items are at `indent`: lines inside it that YAML would not read as the items' content
    (tabs in the indentation, text less indented than the items or at their indentation but not starting an
    item)."""
    stray = (
        rf"\n(?: *\t| {{0,{indent - 1}}}[^ \t\r\n#]| {{{indent}}}(?!-{_EOL})[^ \r\n#])"
        if indent
        else rf"\n(?: *\t|[^ \t\r\n#-]|-(?!{_END}))"
    )
    return re.compile(stray)


class ObjectCache:
    """What one source's previous revision parsed, so the next one redoes only what changed. Holds only what the
    latest revision used, so it never grows past one config.

    - each list item's text (see config.pieces) -> its validated object: a save that changes one route of
      10,000 parses and validates that route, and the others keep their objects (the incremental compiler
      tells changes by identity);
    - each other top-level entry's text -> its parsed value;
    - for documents parsed whole (not in the plain layout), each object's raw data -> its validated object;
    - the last text and its ConfigSet (an unchanged file of a directory is not read again).
    """

    def __init__(self) -> None:
        self._previous: dict[tuple[str, str], BaseModel] = {}
        self._current: dict[tuple[str, str], BaseModel] = {}
        # (section, the items' indentation) -> item text -> object; the previous revision's and this one's.
        self._items: dict[tuple[str, int], dict[str, BaseModel]] = {}
        self._next_items: dict[tuple[str, int], dict[str, BaseModel]] = {}
        self._entries: dict[str, Any] = {}
        self._next_entries: dict[str, Any] = {}
        self.last: tuple[str, ConfigSet] | None = None
        self.prior: Prior | None = None  # the last revision read piece by piece without an issue
        self.compactor = Compactor()

    def get(self, kind: str, item: Any) -> tuple[tuple[str, str], BaseModel | None]:
        # repr of plain YAML data is canonical enough: equal text gives equal repr.
        key = (kind, repr(item))
        return key, self._previous.get(key)

    def put(self, key: tuple[str, str], obj: BaseModel) -> None:
        self._current[key] = obj

    def items(self, section: str, indent: int) -> tuple[dict[str, BaseModel], dict[str, BaseModel]]:
        """The previous revision's item objects of a list, and where this revision's go."""
        return self._items.get((section, indent), {}), self._next_items.setdefault((section, indent), {})

    def known(self, section: str, indent: int) -> dict[str, BaseModel]:
        """The latest revision's item objects of a list, by text (kept up to date by a save spliced in)."""
        return self._items.setdefault((section, indent), {})

    def entry(self, text: str) -> Any:
        """The (key, value) of a top-level entry's text, read again only when the previous revision lacked it."""
        value = self._entries.get(text, _UNREAD)
        if value is _UNREAD:
            value = read_entry(text)
        self._next_entries[text] = value
        return value

    def rotate(self) -> None:
        self._previous, self._current = self._current, {}
        self._items, self._next_items = self._next_items, {}
        self._entries, self._next_entries = self._next_entries, {}


_UNREAD = object()


@dataclass
class Prior:
    """A revision read piece by piece without any issue, which the next save can be spliced into: its text and
    layout, its config, and per section its objects' names and objects in order (the objects are all valid and
    their names unique) and the set of those names."""

    text: str
    source: str
    layout: Layout
    config: ConfigSet
    names: dict[str, list[str]]
    objects: dict[str, list[BaseModel]]
    taken: dict[str, set[str]]


class Unsplit(Exception):
    """A piece did not parse on its own into one entry or item: the document is parsed whole."""


def load_piece(text: str) -> Any:
    """One piece parsed on its own; Unsplit when that fails or it may hold an alias (see config.pieces)."""
    if may_alias(text):
        raise Unsplit
    try:
        return yaml_rs.loads(text, parse_datetime=False)
    except yaml_rs.YAMLDecodeError:
        raise Unsplit from None


def read_entry(text: str) -> Any:
    """A top-level entry `key: value` on its own: (key, value)."""
    value = load_piece(text)
    if not isinstance(value, dict) or len(value) != 1:
        raise Unsplit
    return next(iter(value.items()))


@dataclass(frozen=True)
class Items:
    """A block list's items as pieces of text, each read (or found in the cache) in turn."""

    indent: int
    texts: list[str]
