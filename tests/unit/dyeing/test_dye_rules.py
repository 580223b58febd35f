"""The Python reading of dye rules: first match wins, trust, sticky buckets, baggage, hostile values."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from xgate.dyeing.rules import Dye, Dyer, DyeRequest, baggage_with, cookie_value, first_query_value, sticky_bucket
from xgate.plugins.dyeing import DyeingSettings


def dyer(**settings: Any) -> Dyer:
    return Dyer(DyeingSettings.model_validate(settings))


def request(source: str = "203.0.113.9", claims: dict[str, Any] | None = None, **headers: str) -> DyeRequest:
    named = {key.replace("_", "-"): value for key, value in headers.items()}
    return DyeRequest(headers={":path": "/", **named}, source=source, claims=claims or {})


def test_first_matching_rule_wins_else_the_default() -> None:
    rules = dyer(
        default="stable",
        rules=[
            {"stage": "canary", "header": {"name": "X-Canary", "exact": "1"}},  # names are case-insensitive
            {"stage": "beta", "cookie": {"name": "release", "exact": "beta"}},
            {"stage": "canary", "query": {"name": "canary", "present": True}},
        ],
    )
    assert rules.dye(request(x_canary="1", cookie="release=beta")) == Dye("canary", rule=0)
    assert rules.dye(request(cookie="a=b;  release=beta")) == Dye("beta", rule=1)
    assert rules.dye(DyeRequest(headers={":path": "/p?a=1&canary"}, source="203.0.113.9", claims={})) == Dye(
        "canary", rule=2
    )
    assert rules.dye(request(cookie="release=betamax", x_canary="11")) == Dye("stable")


def test_claims_sources_and_membership() -> None:
    rules = dyer(
        rules=[
            {"stage": "internal", "source": ["10.0.0.0/8", "2001:db8::/32"]},
            {"stage": "beta", "claim": {"name": "groups", "contains": "testers"}},
            {"stage": "beta", "claim": {"name": "scope", "contains": "beta:read"}},
            {"stage": "pro", "claim": {"name": "premium", "equals": True}},
        ]
    )
    assert rules.dye(request(source="10.1.2.3")).stage == "internal"
    assert rules.dye(request(source="2001:db8::1")).stage == "internal"
    assert rules.dye(request(source="not an address")).stage == "stable"
    assert rules.dye(request(claims={"groups": ["staff", "testers"]})).stage == "beta"
    assert rules.dye(request(claims={"groups": "testers-not"})).stage == "stable"
    assert rules.dye(request(claims={"scope": "read beta:read"})).stage == "beta"
    assert rules.dye(request(claims={"premium": True})).stage == "pro"
    assert rules.dye(request(claims={"premium": "yes", "groups": {"testers": 1}})).stage == "stable"


def test_trust_keeps_a_trusted_hops_stage_only() -> None:
    none = dyer(rules=[{"stage": "canary", "header": {"name": "x-canary", "present": True}}])
    assert none.dye(request(x_xgate_stage="canary")) == Dye("stable")
    ranges = dyer(trust=["10.0.0.0/8"])
    assert ranges.dye(request(source="10.0.0.7", x_xgate_stage="canary")) == Dye("canary", kept=True)
    assert ranges.dye(request(source="11.0.0.7", x_xgate_stage="canary")) == Dye("stable")
    assert dyer(trust="all").dye(request(x_xgate_stage="beta")) == Dye("beta", kept=True)


def test_sticky_percentage_is_stable_monotone_and_close_to_its_percent() -> None:
    users = [f"user-{index}" for index in range(20_000)]

    def chosen(percent: float) -> set[str]:
        rules = dyer(rules=[{"stage": "canary", "sticky": {"percent": percent, "key": {"header": "x-user"}}}])
        return {user for user in users if rules.dye(request(x_user=user)).stage == "canary"}

    twenty, forty = chosen(20), chosen(40)
    assert 19.0 <= len(twenty) / len(users) * 100 <= 21.0
    assert twenty < forty  # raising the percentage only adds users
    assert chosen(0) == set() and chosen(100) == set(users)
    # The bucket is a fixed function of seed and key (not Python's per-process hash()).
    assert sticky_bucket("canary", "user-1") == sticky_bucket("canary", "user-1") != sticky_bucket("x", "user-1")
    no_key = dyer(rules=[{"stage": "canary", "sticky": {"percent": 100, "key": {"claim": "sub"}}}])
    assert no_key.dye(request()).stage == "stable"  # no key: the rule does not match


def test_baggage_replaces_our_member_and_keeps_the_others() -> None:
    assert baggage_with(None, "xgate-stage", "canary") == "xgate-stage=canary"
    assert baggage_with("a=1, xgate-stage=beta;p=1 ,b=2", "xgate-stage", "canary") == "a=1,b=2,xgate-stage=canary"
    assert baggage_with("a=" + "x" * 9000, "xgate-stage", "canary") == "xgate-stage=canary"
    assert baggage_with("", "k", "a b") == "k=a%20b"


def test_query_and_cookie_reading_matches_envoys() -> None:
    assert first_query_value("/p?a=1&a=2", "a") == "1"
    assert first_query_value("/p?a", "a") == ""
    assert first_query_value("/p?b=%41", "b") == "%41"  # as sent, not decoded
    assert first_query_value("/p", "a") is None
    assert cookie_value("a=1; b=2", "b") == "2"
    assert cookie_value("ab=1", "b") is None
    assert cookie_value(None, "b") is None


def test_hostile_values_never_raise() -> None:
    rules = dyer(
        rules=[
            {"stage": "beta", "header": {"name": "x-b", "regex": "(a+)+$"}},
            {"stage": "beta", "cookie": {"name": "release", "exact": "beta"}},
            {"stage": "canary", "sticky": {"percent": 50, "key": {"cookie": "uid"}}},
        ]
    )
    assert rules.dye(request(x_b="a" * 60_000 + "!")).stage == "stable"  # RE2: linear time, no backtracking
    assert rules.dye(request(cookie="release=\ufffd\ufffd; uid=\udcff")).stage in {"stable", "canary"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "native", "rules": [{"stage": "c", "source": ["10.0.0.0/8"]}]}, "needs mode ext_proc"),
        ({"mode": "native", "trust": ["10.0.0.0/8"]}, "trust by source range needs mode ext_proc"),
        ({"rules": [{"stage": "c"}]}, "set one of header, cookie"),
        ({"rules": [{"stage": "c", "cookie": {"name": "a;b", "present": True}}]}, "should match pattern"),
        ({"rules": [{"stage": "c", "sticky": {"percent": 101, "key": {"claim": "sub"}}}]}, "less than or equal"),
        ({"header": "bad header"}, "should match pattern"),
    ],
)
def test_invalid_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DyeingSettings.model_validate(settings)


def test_which_path_runs_the_rules() -> None:
    native = {"rules": [{"stage": "c", "header": {"name": "x", "present": True}}]}
    assert not DyeingSettings.model_validate(native).uses_service
    assert DyeingSettings.model_validate({**native, "mode": "ext_proc"}).uses_service
    assert DyeingSettings.model_validate({**native, "trust": ["10.0.0.0/8"]}).uses_service
    assert not DyeingSettings.model_validate({**native, "trust": "all"}).uses_service
    sticky = {"rules": [{"stage": "c", "sticky": {"percent": 5, "key": {"header": "x-user"}}}]}
    assert not DyeingSettings.model_validate(sticky).uses_service  # Envoy's Lua computes the bucket
    assert not DyeingSettings.model_validate({**sticky, "mode": "native"}).uses_service
    with_source = {"rules": [*sticky["rules"], {"stage": "i", "source": ["10.0.0.0/8"]}]}
    assert DyeingSettings.model_validate(with_source).uses_service  # then every rule runs in the service
    with pytest.raises(ValidationError, match="a source rule needs mode ext_proc"):
        DyeingSettings.model_validate({**with_source, "mode": "native"})
