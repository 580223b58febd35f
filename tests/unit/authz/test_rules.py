"""The declarative policy API: what it refuses (and why), what each test means in Python, and the split of a
condition into RBAC policies (source tests natively, the rest in CEL) that keeps its meaning."""

from __future__ import annotations

import random
from typing import Any

import pytest

from xgate.authz import (
    Allow,
    Deny,
    Request,
    RuleError,
    all_of,
    any_of,
    claims,
    header,
    method,
    not_,
    path,
    rule,
    source,
)
from xgate.authz.conditions import AllOf, AnyOf, Condition, Not
from xgate.authz.policy import INLINE_ATTRIBUTE
from xgate.authz.rules import MAX_ALTERNATIVES, alternatives, native


def request(
    verb: str = "GET", target: str = "/", headers: dict[str, str] | None = None, ip: str = "127.0.0.1"
) -> Request:
    return Request(verb, target, headers or {}, ip, "route")


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: rule(claims.groups == "admin"), "not bool (== on a claim"),  # type: ignore[arg-type,comparison-overlap]
        (lambda: rule(lambda r, c: True), "not function; for logic of your own write a plain policy"),  # type: ignore[arg-type]
        (lambda: claims.a.exists() and method.equals("GET"), "no truth value"),
        (lambda: claims.a.equals([1]), "claim a.equals compares with a str, bool, int or float, not list"),  # type: ignore[arg-type]
        (lambda: claims.a.equals(2**60), "beyond +-2**53"),
        (lambda: claims.a.equals(float("nan")), "not a finite number"),
        (lambda: claims.a.any_of(), "needs at least one value"),
        (lambda: method.equals("GET POST"), "not an HTTP method"),
        (lambda: header("bad name"), "not an HTTP header name"),
        (lambda: header(":path"), "not an HTTP header name"),
        (lambda: source.within("10.0.0.1/8"), "is not a network like 10.0.0.0/8"),
        (lambda: all_of(), "all_of() needs at least one condition"),
        (lambda: claims.a.exists() & True, "& combines conditions, not bool"),
        (lambda: rule(claims.a.exists(), deny=403), "takes a Deny"),  # type: ignore[arg-type]
        (lambda: bool(claims.groups), "is not a condition"),
    ],
)
def test_what_the_api_cannot_express_is_refused_with_the_reason(build: Any, reason: str) -> None:
    with pytest.raises(RuleError, match=None) as raised:
        build()
    assert reason in str(raised.value)


def test_too_many_rbac_policies_are_refused_with_a_way_out() -> None:
    mixed = [source.within(f"10.{i}.0.0/16") | claims[f"c{i}"].exists() for i in range(5)]  # 2**5 alternatives
    with pytest.raises(RuleError, match=f"needs 32 RBAC policies in Envoy \\(at most {MAX_ALTERNATIVES}\\)"):
        rule(all_of(*mixed))
    rule(source.within("10.0.0.0/8") & all_of(*(claims[f"c{i}"].exists() for i in range(5))))  # one policy
    assert len(alternatives(claims.a.equals(1) | (method.equals("GET") & ~source.within("10.0.0.0/8")))) == 1


def test_claim_tests_are_false_when_missing_or_of_another_type() -> None:
    get = request()
    groups = claims.groups.contains("admin")
    assert groups.evaluate(get, {"groups": ["x", "admin"]})
    assert not groups.evaluate(get, {"groups": "admin"})  # a string is not a list
    assert not groups.evaluate(get, {"groups": [["admin"]]})
    assert not groups.evaluate(get, {})
    level = claims.level.equals(3)
    assert level.evaluate(get, {"level": 3}) and level.evaluate(get, {"level": 3.0})  # numbers as numbers
    assert not level.evaluate(get, {"level": "3"}) and not level.evaluate(get, {"level": True})
    assert not claims.flag.equals(True).evaluate(get, {"flag": 1})  # a bool never equals a number
    tenant = claims.tenant.any_of("acme", "globex")
    assert tenant.evaluate(get, {"tenant": "acme"}) and tenant.evaluate(get, {"tenant": ["x", "globex"]})
    assert not tenant.evaluate(get, {"tenant": {"acme": 1}})
    nested = claims["org"]["role"].equals("owner")
    assert nested.evaluate(get, {"org": {"role": "owner"}}) and not nested.evaluate(get, {"org": "owner"})
    assert claims.n.exists().evaluate(get, {"n": None})  # present, whatever its value


def test_request_tests() -> None:
    assert path.equals("/a").evaluate(request(target="/a?x=1#f"), {})  # the path without its query
    assert path.startswith("/a/").evaluate(request(target="/a/b"), {})
    assert method.any_of("GET", "HEAD").evaluate(request("HEAD"), {})
    tenant = header("X-Tenant")
    assert tenant.equals("a").evaluate(request(headers={"x-tenant": "a"}), {})  # names in any case
    assert not tenant.equals("a").evaluate(request(headers={"x-tenant": "a,a"}), {})
    assert tenant.exists().evaluate(request(headers={"x-tenant": ""}), {})
    assert not tenant.startswith("a").evaluate(request(), {})
    inside = source.within("10.0.0.0/8", "::1/128")
    assert inside.evaluate(request(ip="10.1.2.3"), {}) and inside.evaluate(request(ip="::1"), {})
    assert not inside.evaluate(request(ip="11.0.0.1"), {}) and not inside.evaluate(request(ip="not-an-ip"), {})


def test_a_rule_is_an_inline_policy_answering_allow_or_its_deny() -> None:
    admins = rule(claims.groups.contains("admin") & ~method.equals("DELETE"), deny=Deny(451, "no", {"x-why": "r"}))
    assert getattr(admins, INLINE_ATTRIBUTE) is True
    assert admins(request(), {"groups": ["admin"]}) == Allow()
    assert admins(request("DELETE"), {"groups": ["admin"]}) == Deny(451, "no", {"x-why": "r"})
    assert rule(claims.a.exists())(request(), {}) == Deny(403)
    assert not_(not_(claims.a.exists())) == claims.a.exists()
    assert any_of(any_of(claims.a.exists()), claims.b.exists()) == AnyOf((claims.a.exists(), claims.b.exists()))


def _random_condition(rng: random.Random, depth: int) -> Condition:
    if depth == 0 or rng.random() < 0.3:
        return rng.choice(
            [
                source.within("10.0.0.0/8"),
                source.within("192.168.0.0/16", "10.9.0.0/16"),
                claims.a.exists(),
                claims.b.equals(1),
                method.equals("GET"),
                header("x").exists(),
                header("x").equals("1"),
            ]
        )
    parts = [_random_condition(rng, depth - 1) for _ in range(rng.randint(1, 3))]
    choice = rng.random()
    if choice < 0.4:
        return all_of(*parts)
    if choice < 0.8:
        return any_of(*parts)
    return not_(parts[0])


def _holds(condition: Condition | None, req: Request, data: dict[str, Any]) -> bool:
    return condition is None or condition.evaluate(req, data)


def _natives_only(condition: Condition) -> bool:
    return all(native(test) for test in _tests(condition))


def test_header_values_are_tested_in_cel() -> None:
    """RBAC's header matcher meets a repeated header when one value does; the Python path sees them joined."""
    assert native(header("x").exists()) and native(method.equals("GET")) and native(path.startswith("/a"))
    assert not native(header("x").equals("a")) and not native(header("x").startswith("a"))
    assert not native(header("x").any_of("a", "b"))
    assert alternatives(header("x").equals("a") & method.equals("GET")) == [
        (method.equals("GET"), header("x").equals("a"))
    ]


def test_the_split_into_rbac_policies_keeps_the_meaning() -> None:
    rng = random.Random(19)
    requests = [
        request(verb, headers=headers, ip=ip)
        for verb in ("GET", "POST")
        for headers in ({}, {"x": "1"})
        for ip in ("10.1.1.1", "10.9.1.1", "192.168.1.1", "8.8.8.8")
    ]
    payloads: list[dict[str, Any]] = [{}, {"a": 1}, {"b": 1}, {"a": 0, "b": 1.0}]
    for _ in range(300):
        condition = _random_condition(rng, 4)
        split = alternatives(condition)
        for sources, rest in split:
            assert sources is None or _natives_only(sources)  # principals: only what RBAC tests natively
            assert rest is None or not any(native(t) for t in _tests(rest))
        for req in requests:
            for data in payloads:
                expected = condition.evaluate(req, data)
                assert expected == any(_holds(s, req, data) and _holds(r, req, data) for s, r in split), condition


def _tests(condition: Condition) -> list[Condition]:
    if isinstance(condition, AllOf | AnyOf):
        return [test for part in condition.parts for test in _tests(part)]
    return _tests(condition.part) if isinstance(condition, Not) else [condition]
