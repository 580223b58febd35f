"""route_changes finds the routes that differ between two revisions by identity, only looking closely at the
middle where they differ, and says exactly what comparing every route by name says."""

from __future__ import annotations

import random
from dataclasses import replace

from xgate.config.load import ConfigSet
from xgate.config.schema import Route
from xgate.incremental import route_changes


def by_name(before: tuple[Route, ...], after: tuple[Route, ...]) -> dict[str, Route | None]:
    """The reference: every route of `after` whose object is not `before`'s of that name, and the gone ones."""
    old = {route.name: route for route in before}
    changes: dict[str, Route | None] = {route.name: route for route in after if old.pop(route.name, None) is not route}
    return changes | dict.fromkeys(old)


def route(name: str) -> Route:
    return Route.model_validate({"name": name, "direct_response": {"status": 200, "body": name}})


def test_random_edits_give_what_comparing_every_route_gives() -> None:
    rng = random.Random(5)
    base = ConfigSet(source="t")
    routes = [route(f"r{n}") for n in range(60)]
    for step in range(2000):
        before = tuple(routes)
        for _ in range(rng.choice([0, 1, 1, 2, 5])):
            roll = rng.random()
            index = rng.randrange(len(routes)) if routes else 0
            if roll < 0.4 and routes:
                routes[index] = route(routes[index].name)  # the same name, another object
            elif roll < 0.6:
                names = {r.name for r in routes}
                name = next(f"n{k}" for k in range(10**6) if f"n{k}" not in names)
                routes.insert(index, route(name))
            elif roll < 0.8 and routes:
                del routes[index]
            elif len(routes) > 1:
                other = rng.randrange(len(routes))
                routes[index], routes[other] = routes[other], routes[index]
        after = tuple(routes)
        found = route_changes(replace(base, routes=before), replace(base, routes=after))
        assert found == by_name(before, after), f"step {step}"
