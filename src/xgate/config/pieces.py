"""Read a config document piece by piece, its top-level entries and list items, so a save re-reads only what changed.

A 10,000-route file is 740 KB of YAML: parsing it whole took ~70 ms and validating every object ~200 ms, for a
save that usually changes one route. Cut at the lines where YAML's own structure starts a new entry, each piece
parses on its own to exactly what it is inside the document, and a piece whose text did not change is not
parsed (nor validated) again (ObjectCache keeps the results; load.parse_document reads the pieces).

Only the plain layout is split: a block mapping at the top (`key:` at column 0, each key once), the sections
`listeners`, `upstreams` and `routes` as block lists (`- ` items at one indentation). Anything else gives None
and the caller parses the whole text, as before: directives and document markers, tabs or stray lines at the
indentation of the items, lone CR line breaks, and aliases (`*name`), whose anchor may sit in another piece.
A piece cut wrongly cannot pass unnoticed: its own parse then fails (an unterminated quote or bracket) or
gives other than one item, and the caller parses the whole text instead (see load.parse_document).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml_rs
from pydantic import BaseModel

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


@dataclass
class Layout:
    """The pieces of one document, in document order."""

    # Top-level entries other than block-list sections: (key, the entry's text from its key line to the next).
    entries: list[tuple[str, str]] = field(default_factory=list)
    # Block-list sections: key -> (the items' indentation, each item's text after its `-`, up to and with the
    # line break before the next item or top-level line). An item's whole text is `" " * indentation + "-" + text`.
    lists: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # the top-level keys in document order


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


def _items(lined: str, start: int, end: int) -> tuple[int, list[str]] | None:
    """The items of a block list whose key line ends at `start` (the list ends at `end`): their indentation and
    the text of each after its `-`; None when the list's lines are not all items, their content or comments."""
    first = _FIRST_ITEM.search(lined, start, end)
    if first is None:
        return (0, []) if _CONTENT.search(lined, start, end) is None else None  # an empty section: `routes:`
    if _CONTENT.search(lined, start, first.start()):
        return None  # something other than comments between the key and its first item
    indent = len(first.group(1))
    if _stray(indent).search(lined, first.start(), end):
        return None
    # Every line at the items' indentation now starts an item: split there (a str.split, at C speed), then give
    # each item but the last the line break the split took.
    items = lined[first.start() : end].split("\n" + " " * indent + "-")
    return indent, [item + "\n" for item in items[1:-1]] + items[-1:]


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

    def get(self, kind: str, item: Any) -> tuple[tuple[str, str], BaseModel | None]:
        # repr of plain YAML data is canonical enough: equal text gives equal repr.
        key = (kind, repr(item))
        return key, self._previous.get(key)

    def put(self, key: tuple[str, str], obj: BaseModel) -> None:
        self._current[key] = obj

    def items(self, section: str, indent: int) -> tuple[dict[str, BaseModel], dict[str, BaseModel]]:
        """The previous revision's item objects of a list, and where this revision's go."""
        return self._items.get((section, indent), {}), self._next_items.setdefault((section, indent), {})

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
