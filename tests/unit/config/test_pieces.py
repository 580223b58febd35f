"""A file read piece by piece (config.pieces) gives exactly what a whole parse gives, and a save that changes one
object of many reads that object alone."""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any

import pytest
import yaml

from xgate.config import load, pieces
from xgate.config.load import ConfigSet, ObjectCache, parse_document
from xgate.config.pieces import ItemList, split_document
from xgate.controlplane import ControlPlane
from xgate.discovery.snapshot import build_snapshot
from xgate.errors import ConfigError
from xgate.incremental import IncrementalCompiler
from xgate.pipeline import compile_config
from xgate.sources.revision import Revision, revision_of
from xgate.translate import Resources

# -- a random document: objects, each written in one of YAML's ways, and edits to it ---------------------------

PLUGINS = (
    "plugins:\n  cors: {allow_origins: ['*']}\n  rate_limit: {service: '127.0.0.1:18003'}\n",
    "plugins:\n  cors:\n    allow_origins: ['https://a.example.com']  # edited\n",
    "plugins: {cors: {allow_origins: ['*']}}\n",
    "plugins: 3\n",  # not a mapping: a document-level problem (for one step)
)
# Top-level oddities put before the document for one step: each makes it a document-level error or unsplittable.
ODDITIES = ("", "---\n", "unknown: 1\n", "routes: []\n", "xgate: v2\n", "listeners:\n\t- {}\n", "%YAML 1.2\n---\n")
TRICKY_BODIES = (
    'x\n  - y: "z"',  # a line that looks like a list item, inside a string
    "- not an item\nstill the body",
    "",
    "tab\there",
    "*star* and &amp",
)


def _route(rng: random.Random, name: str, bad: bool = False) -> dict[str, Any]:
    """A random route; `bad`: one the IR or the schema refuses (a missing upstream, an unknown field...)."""
    route: dict[str, Any] = {"name": name, "match": {"path": {"prefix": f"/{name}/{rng.randint(0, 9)}"}}}
    if rng.random() < 0.2:
        route["match"]["hosts"] = [rng.choice(["a.example.com", "*.example.org"])]
    roll = rng.random()
    if roll < 0.35:
        body = rng.choice([name, f"gen-{rng.randint(0, 99)}", *TRICKY_BODIES])
        route["direct_response"] = {"status": 200, "body": body}
    elif bad and roll < 0.6:
        route["upstream"] = "missing"  # refused by the IR (a file is all or nothing)
    else:
        route["upstream"] = rng.choice(["a", "b"])
    if rng.random() < 0.15:
        route["plugins"] = {"rate_limit": {"global": {"requests": rng.randint(1, 50)}}}
    if bad and rng.random() < 0.4:
        route["unknown_field"] = 1  # an invalid object: reported with its line
    elif bad and rng.random() < 0.5:
        route["priority"] = "high"
    return route


def _block(item: Any, indent: int, rng: random.Random) -> str:
    """One list item written in block style (sometimes with the `-` on a line of its own)."""
    body = yaml.safe_dump(item, default_flow_style=False, sort_keys=rng.random() < 0.5, width=1000)
    pad = " " * (indent + 2)
    lines = body.rstrip("\n").split("\n")
    if rng.random() < 0.2:
        return " " * indent + "-\n" + "".join(pad + line + "\n" for line in lines)
    return " " * indent + "- " + lines[0] + "\n" + "".join(pad + line + "\n" for line in lines[1:])


def _literal(item: dict[str, Any], indent: int, rng: random.Random) -> str:
    """A route whose body is a block scalar (|, |+, |-, >), trailing blank lines and all."""
    body = item.get("direct_response", {}).get("body")
    if not isinstance(body, str) or "\t" in body:
        return _block(item, indent, rng)
    rest = {key: value for key, value in item.items() if key != "direct_response"}
    pad = " " * (indent + 2)
    head = _block(rest, indent, rng)
    style = rng.choice(["|", "|+", "|-", ">"])
    lines = body.split("\n") if body else ["x"]
    scalar = "".join(f"{pad}    {line}\n" if line else "\n" for line in lines)
    trailing = "\n" * rng.randint(0, 2)
    return f"{head}{pad}direct_response:\n{pad}  status: 200\n{pad}  body: {style}\n{scalar}{trailing}"


def _item(item: Any, indent: int, rng: random.Random) -> str:
    style = rng.random()
    if style < 0.4:
        text = " " * indent + "- " + json.dumps(item) + "\n"
    elif style < 0.7:
        text = _block(item, indent, rng)
    elif style < 0.85 and isinstance(item, dict):
        text = _literal(item, indent, rng)
    else:  # flow style across lines
        text = " " * indent + "- " + json.dumps(item, indent=1).replace("\n", "\n" + " " * (indent + 3)) + "\n"
    if rng.random() < 0.1:
        text += rng.choice(["\n", "# a comment at column 0\n", " " * indent + "  # indented comment\n"])
    return text


class Document:
    """A config held as objects and rendered with random formatting; `edit` changes it a little."""

    def __init__(self, rng: random.Random, routes: int) -> None:
        self.rng = rng
        self.routes = [_route(rng, f"r{n}") for n in range(routes)]
        self.upstreams: list[Any] = [
            {"name": "a", "endpoints": ["127.0.0.1:1"]},
            {"name": "b", "endpoints": ["127.0.0.1:2"]},
        ]
        self.listeners: list[Any] = [{"name": "edge", "address": "127.0.0.1", "port": 80}]
        self.plugins = PLUGINS[0]
        self.indent = 2
        # id(object) -> (the object, its text), kept while it does not change (the object too: ids are reused)
        self.rendered: dict[int, tuple[Any, str]] = {}
        self.extra = ""  # a top-level oddity: an unknown section, a second `routes:`, a document marker
        self.undo: list[tuple[int, Any]] = []  # items put in for one step only: (index, the item before)
        self.order = ["listeners", "upstreams", "routes"]
        self.hidden = ""  # a section whose key line is commented out, for one step

    def text_of(self, item: Any) -> str:
        if id(item) not in self.rendered:
            self.write(item, _item(item, self.indent, self.rng))
        return self.rendered[id(item)][1]

    def write(self, item: Any, text: str) -> None:
        self.rendered[id(item)] = (item, text)

    def render(self) -> str:
        sections = {"listeners": self.listeners, "upstreams": self.upstreams, "routes": self.routes}
        parts = ["# generated\n", "xgate: v1\n", self.plugins]
        for key in self.order:
            items = sections[key]
            if not items and self.rng.random() < 0.5:
                parts.append(f"{key}: []\n")
                continue
            parts.append(f"{'#' if key == self.hidden else ''}{key}:{'  # list' if self.rng.random() < 0.1 else ''}\n")
            parts += [self.text_of(item) for item in items]
        return self.extra + "".join(parts)

    def edit(self) -> None:
        """One random change; oddities (a top-level one, aliases, broken text) last one step."""
        rng, routes = self.rng, self.routes
        self.extra = self.hidden = ""
        if self.plugins == PLUGINS[-1]:
            self.plugins = PLUGINS[0]
        for index, item in reversed(self.undo):
            routes[index] = item
        self.undo.clear()
        roll = rng.random()
        if roll < 0.4 and routes:
            index = rng.randrange(len(routes))
            routes[index] = _route(rng, routes[index]["name"])
        elif roll < 0.55:
            routes.insert(rng.randint(0, len(routes)), _route(rng, f"n{rng.randint(0, 500)}"))
        elif roll < 0.65 and routes:
            del routes[rng.randrange(len(routes))]
        elif roll < 0.7 and len(routes) > 1:
            i, j = rng.randrange(len(routes)), rng.randrange(len(routes))
            routes[i], routes[j] = routes[j], routes[i]
        elif roll < 0.72 and routes:  # the same object written another way
            self.rendered.pop(id(routes[rng.randrange(len(routes))]), None)
        elif roll < 0.74 and routes:  # an item commented out or indented another way, for one step
            index = rng.randrange(len(routes))
            self.undo.append((index, routes[index]))
            odd, text = dict(routes[index]), self.text_of(routes[index])
            at = len(text) - len(text.lstrip(" "))  # where its `-` is
            self.write(
                odd,
                rng.choice(
                    [
                        "#" + text,
                        " " + text,
                        "".join(f"# {line}\n" for line in text.splitlines()),
                        text[:at] + "#" + text[at + 1 :],  # the `-` replaced: the change starts inside the item
                        text[:at] + text[at + 1 :],
                    ]
                ),
            )
            routes[index] = odd
        elif roll < 0.78:
            self.plugins = rng.choice(PLUGINS)
        elif roll < 0.81:  # before the routes: what follows moves
            self.upstreams[1] = {"name": "b", "endpoints": [f"127.0.0.1:{rng.randint(2, 20000)}"]}
        elif roll < 0.82:  # the lists in another order, or one of their keys commented out for one step
            if rng.random() < 0.5:
                rng.shuffle(self.order)
            else:
                self.hidden = rng.choice(self.order)
        elif roll < 0.84:  # every item at another indentation
            self.indent = rng.choice([0, 2, 4])
            self.rendered.clear()
        elif roll < 0.9:
            self.extra = rng.choice(ODDITIES)
        elif roll < 0.93 and routes:  # an anchor and an alias across two items
            self.undo += [(0, routes[0]), (len(routes) - 1, routes[-1])]
            routes[0] = {**routes[0], "match": {"path": {"prefix": "/shared"}}}
            anchored = " " * self.indent + "- " + json.dumps(routes[0]).replace('{"prefix"', '&shared {"prefix"', 1)
            self.write(routes[0], anchored + "\n")
            if len(routes) > 1:
                alias = {**routes[-1], "match": {"path": "ALIAS"}}
                routes[-1] = alias
                self.write(alias, " " * self.indent + "- " + json.dumps(alias).replace('"ALIAS"', "*shared") + "\n")
        elif roll < 0.96 and routes:  # a duplicate name, or a route refused
            index = rng.randrange(len(routes))
            self.undo.append((index, routes[index]))
            routes[index] = {**routes[index], "name": routes[0]["name"]} if roll < 0.945 else _route(rng, "bad", True)
        elif routes:  # text YAML refuses: the whole document is refused
            self.undo.append((len(routes) - 1, routes[-1]))
            broken = dict(routes[-1])
            routes[-1] = broken
            self.write(broken, " " * self.indent + '- {name: "unterminated\n')


# -- comparing the two ways --------------------------------------------------------------------------------------


def outcome(text: str, cache: ObjectCache | None) -> ConfigSet | list[str]:
    try:
        return parse_document(text, "gw.yaml", cache)
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]


def resources_bytes(resources: Any) -> dict[tuple[str, str], bytes]:
    snapshot = build_snapshot(resources, "r", 1)
    return {(url, name): resource.data for url, found in snapshot.resources.items() for name, resource in found.items()}


@pytest.mark.parametrize("seed", range(6))
def test_reading_piece_by_piece_equals_a_whole_parse(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    spliced: list[bool] = []
    parse_change = load.parse_change

    def counting(text: str, source: str, cache: ObjectCache, most: int | None = None) -> ConfigSet | None:
        config = parse_change(text, source, cache, most)
        spliced.append(config is not None)
        return config

    monkeypatch.setattr(load, "parse_change", counting)
    rng = random.Random(seed)
    document = Document(rng, routes=rng.choice([3, 30]))
    cache = ObjectCache()
    split = 0
    for step in range(150):
        text = document.render()
        split += split_document(text) is not None
        assert outcome(text, cache) == outcome(text, None), f"step {step}:\n{text}"
        document.edit()
    assert split > 50  # most documents took the piece by piece path
    assert sum(spliced) >= 5  # saves were spliced into the revision before (not only cut whole): 6-60 of 150


@pytest.mark.parametrize("seed", range(4))
async def test_a_save_through_pieces_serves_byte_for_byte_what_a_full_parse_compiles_to(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole new path: the file source's cached read, the control plane's change detection by identity and
    its incremental compile, against a fresh parse and a full compile of the same text."""
    incremental: list[bool] = []
    apply = IncrementalCompiler.apply

    def counting(self: IncrementalCompiler, config: ConfigSet, changes: Any) -> Any:
        result = apply(self, config, changes)
        incremental.append(result is not None)
        return result

    monkeypatch.setattr(IncrementalCompiler, "apply", counting)
    rng = random.Random(100 + seed)
    document = Document(rng, routes=40)
    cache, plane = ObjectCache(), ControlPlane()
    published: list[Resources] = []  # what the control plane serves (the services' resources leave 2 s late)
    publish = plane.rollout.publish

    def recording(resources: Resources, revision: str, seen_at: float = 0.0) -> None:
        published.append(resources)
        publish(resources, revision, seen_at)

    monkeypatch.setattr(plane.rollout, "publish", recording)
    served: dict[tuple[str, str], bytes] | None = None
    for step in range(120):
        text = document.render()
        document.edit()
        try:
            config = parse_document(text, "gw.yaml", cache)
        except ConfigError:
            with pytest.raises(ConfigError):
                parse_document(text, "gw.yaml")
            continue
        await plane.on_revision(Revision(revision=revision_of(text), config=config))
        expected: dict[tuple[str, str], bytes] | None = served  # if refused: the last good config keeps serving
        with contextlib.suppress(ConfigError):
            expected = resources_bytes(compile_config(parse_document(text, "gw.yaml"), "x").resources)
        if expected is None:
            continue
        assert resources_bytes(published[-1]) == expected, f"step {step}"
        served = expected
    assert sum(incremental) > 20  # many saves took the incremental path


def test_a_save_that_changes_one_route_reads_and_validates_that_route_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    routes = [f"  - {{name: r{n}, match: {{path: {{prefix: /r{n}}}}}, upstream: a}}\n" for n in range(2000)]
    head = "listeners: [{name: l, port: 80}]\nupstreams: [{name: a, endpoints: ['127.0.0.1:1']}]\nroutes:\n"
    cache = ObjectCache()
    first = parse_document(head + "".join(routes), "gw.yaml", cache)
    read: list[str] = []
    load_piece = pieces.load_piece

    def counting(text: str) -> Any:
        read.append(text)
        return load_piece(text)

    monkeypatch.setattr("xgate.config.load.load_piece", counting)
    routes[700] = "  - {name: r700, match: {path: {prefix: /changed}}, upstream: a}\n"
    second = parse_document(head + "".join(routes), "gw.yaml", cache)
    assert read == ["  -" + routes[700][3:]]
    changed = [index for index, (a, b) in enumerate(zip(first.routes, second.routes, strict=True)) if a is not b]
    assert changed == [700]
    assert second == parse_document(head + "".join(routes), "gw.yaml")


@pytest.mark.parametrize(
    "text",
    [
        "---\nroutes: []\n",  # a document marker
        "routes:\n  - a\n - b\n",  # an item at another indentation
        "routes:\n  b: 1\n  - a\n",  # something before the first item
        "routes:\n  - a\n  b: 1\n",  # text at the items' indentation that starts no item
        "routes:\n  - a\n\t- b\n",  # a tab
        "routes: []\nroutes: []\n",  # a key given twice
        '"routes":\n  - a\n',  # a quoted key
        "routes:\n  - a\r  - b\n",  # a lone CR
        "  indented: 1\nroutes:\n",
        "- a\nroutes:\n",
    ],
)
def test_documents_outside_the_plain_layout_are_parsed_whole(text: str) -> None:
    assert split_document(text) is None


def test_the_plain_layout_is_cut_at_its_items() -> None:
    text = "xgate: v1  # c\nroutes:\n  # first\n  - a\n\n  - b: |\n      - c\n# end\nupstreams:\n- u\n"
    layout = split_document(text)
    assert layout is not None
    assert layout.order == ["xgate", "routes", "upstreams"]
    assert layout.entries == [("xgate", "xgate: v1  # c\n")]
    routes, upstreams = text.index("  - a"), text.index("- u")
    assert layout.lists == {
        "routes": ItemList(2, [" a\n\n", " b: |\n      - c\n# end\n"], routes, upstreams - len("upstreams:\n")),
        "upstreams": ItemList(0, [" u\n"], upstreams, len(text)),
    }


def test_an_item_read_at_one_indentation_is_read_again_at_another() -> None:
    """The text after the `-` is the same, but its lines' indentation means something else under another `-`."""
    cache = ObjectCache()
    head = "listeners: [{name: l, port: 80}]\nupstreams: [{name: a, endpoints: ['127.0.0.1:1']}]\nroutes:\n"
    indented = head + "  - name: x\n    upstream: a\n"
    assert [route.name for route in parse_document(indented, "gw.yaml", cache).routes] == ["x"]
    dedented = head + "- name: x\n    upstream: a\n"
    assert outcome(dedented, cache) == outcome(dedented, None)


def test_saves_are_spliced_in_whatever_list_they_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """One route changed, then an upstream (the routes after it move), then a route again: each save reads only
    its item (the file's other lists are where the previous save left them), and equals a whole parse."""
    spliced: list[bool] = []
    parse_change = load.parse_change

    def counting(text: str, source: str, cache: ObjectCache, most: int | None = None) -> ConfigSet | None:
        config = parse_change(text, source, cache, most)
        spliced.append(config is not None)
        return config

    monkeypatch.setattr(load, "parse_change", counting)
    upstreams = "upstreams:\n  - {name: a, endpoints: ['127.0.0.1:1']}\n  - {name: b, endpoints: ['127.0.0.1:2']}\n"
    routes = [f"  - {{name: r{n}, match: {{path: {{prefix: /r{n}}}}}, upstream: a}}\n" for n in range(50)]
    head = "listeners: [{name: l, port: 80}]\n"
    cache = ObjectCache()
    texts = [head + upstreams + "routes:\n" + "".join(routes)]
    texts.append(
        texts[-1].replace("  - {name: r10, match: {path: {prefix: /r10}}, upstream: a}", "  - {name: r10, upstream: b}")
    )
    texts.append(texts[-1].replace("127.0.0.1:2", "127.0.0.1:20000"))
    texts.append(texts[-1].replace(routes[30], ""))
    for step, text in enumerate(texts):
        assert parse_document(text, "gw.yaml", cache) == parse_document(text, "gw.yaml"), f"step {step}"
    assert spliced == [False, True, True, True]
