"""Compacted config objects equal what was validated, share their defaults and field sets, and stay frozen."""

from __future__ import annotations

import pydantic
import pytest

from xgate.config.compact import Compactor
from xgate.config.load import ObjectCache, parse_document
from xgate.config.schema import Route

ROUTES = """
listeners: [{name: l, port: 80}]
upstreams: [{name: a, endpoints: ["127.0.0.1:1"]}]
routes:
  - {name: one, match: {path: {prefix: /one}}, upstream: a}
  - {name: two, match: {path: {prefix: /two}}, upstream: a}
  - {name: three, match: {path: {exact: /3}, headers: [{name: x, exact: "1"}]}, upstream: a,
     headers: {request: {set: {x-a: "1"}}}}
"""


def test_compacted_objects_equal_the_validated_ones_and_share_what_they_hold_alike() -> None:
    compacted = parse_document(ROUTES, "gw.yaml", ObjectCache())
    plain = parse_document(ROUTES, "gw.yaml")
    assert compacted == plain
    one, two, three = compacted.routes
    assert one.headers is two.headers  # the default header rules: one instance
    assert three.headers is not one.headers and three.headers == plain.routes[2].headers
    assert one.__pydantic_fields_set__ is two.__pydantic_fields_set__
    assert one.model_fields_set == plain.routes[0].model_fields_set == {"name", "match", "upstream"}
    assert one.match.path.prefix == "/one" and one.upstream is two.upstream  # an interned string
    with pytest.raises(pydantic.ValidationError):
        one.name = "other"


def test_a_copy_with_changes_does_not_touch_the_shared_field_set() -> None:
    compactor = Compactor()
    first = compactor.compact(Route.model_validate({"name": "a", "upstream": "u"}))
    second = compactor.compact(Route.model_validate({"name": "b", "upstream": "u"}))
    changed = first.model_copy(update={"priority": 3})
    assert changed.model_fields_set == {"name", "upstream", "priority"}
    assert first.model_fields_set == second.model_fields_set == {"name", "upstream"}
