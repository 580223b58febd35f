"""Which plain policies run inline unmarked: pure.impurity's proof (only reads its arguments, no I/O, no endless
loop), the registry's choice and log, and the runner sending a proven policy that overran its budget to the pool."""

from __future__ import annotations

import logging
import re
import sys
import textwrap
import threading
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xgate.authz import Allow, Deny, PolicyRegistry, PolicyRunner, Request
from xgate.authz.pure import impurity

KNOWN = (Allow, Deny, Request)
REQUEST = Request(method="GET", path="/a", headers={"x-tenant": "acme"}, source="10.0.0.7", route="r")

PROVEN = """
from xgate.authz import Allow, Deny, Request

ADMINS = frozenset({"ann", "bob"})
LEVELS = {"gold": [3, 4], "silver": [2]}
PREFIXES = ("/admin", "/ops")


def _group_ok(groups, wanted="admin"):
    return isinstance(groups, list) and wanted in groups


def _level(claims):
    try:
        return int(claims["level"])
    except (KeyError, TypeError, ValueError):
        return 0


def admins(request, claims):
    if "admin" in claims.get("roles", []):
        return Allow(headers={"x-xgate-user": str(claims["sub"])})
    return Deny(403, body="admins only")


def loops_and_helpers(request: Request, claims, *, limit=3):
    wanted = {g for g in claims.get("groups", []) if isinstance(g, str)}
    for group in sorted(wanted, key=lambda name: (len(name), name)):
        if group.startswith("x-"):
            continue
        if _group_ok([group]) and _level(claims) >= limit:
            return Allow(headers={"x-group": group})
    if any(request.path.startswith(prefix) for prefix in PREFIXES) or claims.get("sub") in ADMINS:
        return Allow()
    tenant = request.headers.get("x-tenant", "")
    if _level(claims) in LEVELS.get(tenant, []):
        return Allow()
    return Deny(403)
"""

REFUSED = {
    "sleeps": ("import time\ndef p(r, c):\n    time.sleep(1)\n    return None\n", "uses time (module)"),
    "spins": ("def p(r, c):\n    while c:\n        pass\n", "has a loop that is not a `for`"),
    "imports": ("def p(r, c):\n    import os\n    return os\n", "imports a module"),
    "with": ("def p(r, c):\n    with c:\n        return None\n", "uses `with`"),
    "prints": ("def p(r, c):\n    print(c)\n", "uses the builtin print"),
    "range": ("def p(r, c):\n    for _ in range(int(c['n'])):\n        pass\n", "uses the builtin range"),
    "logs": ("import logging\nlog = logging.getLogger()\ndef p(r, c):\n    log.info('x')\n", "uses log (RootLogger)"),
    "dunder": ("def p(r, c):\n    return r.__class__\n", "uses the attribute __class__"),
    "global write": ("N = 0\ndef p(r, c):\n    global N\n    N += 1\n", "writes a global"),
    "default": ("def p(r, c, s=object()):\n    return s\n", "has a default argument that is not plain data"),
    "undefined": ("def p(r, c):\n    return LATER\n", "uses LATER, which is not defined when loaded"),
    "instance": ("class C:\n    pass\nCONFIG = C()\ndef p(r, c):\n    return CONFIG\n", "uses CONFIG (C)"),
    "class": ("class C:\n    pass\ndef p(r, c):\n    return C()\n", "uses C (type)"),
    "recursion": ("def p(r, c):\n    return p(r, c)\n", "p calls itself (recursion)"),
    "mutual": (
        "def a(r, c):\n    return b(r, c)\ndef b(r, c):\n    return a(r, c)\ndef p(r, c):\n    return a(r, c)\n",
        "p (line 6) calls a: a (line 2) calls b: b (line 4) calls a: a calls itself (recursion)",
    ),
    "helper sleeps": (
        "import time\ndef helper():\n    time.sleep(1)\ndef p(r, c):\n    return helper()\n",
        "p (line 5) calls helper: helper (line 3) uses time (module)",
    ),
    "helper state": (
        "def helper():\n    return 1\nhelper.session = object()\ndef p(r, c):\n    return helper()\n",
        "helper has attributes of its own",
    ),
    "async": ("async def p(r, c):\n    return None\n", "is a generator or coroutine"),
    "big constant": ("BIG = list(range(20_000))\ndef p(r, c):\n    return BIG\n", "uses BIG (list)"),
    "shadowed builtin": ("import os\nlen = os.getpid\ndef p(r, c):\n    return len()\n", "uses len (builtin_function"),
}


def module_of(source: str) -> types.ModuleType:
    module = types.ModuleType(f"xgate_test_pure_{uuid.uuid4().hex[:8]}")
    exec(compile(textwrap.dedent(source), f"<{module.__name__}>", "exec"), module.__dict__)
    return module


def test_functions_that_only_read_their_arguments_are_proven() -> None:
    module = module_of(PROVEN)
    assert impurity(module.admins, KNOWN) is None
    assert impurity(module.loops_and_helpers, KNOWN) is None
    # What the proof allows still decides as written.
    groups = {"groups": ["x-admin", "admin"], "level": "3"}
    assert module.loops_and_helpers(REQUEST, groups) == Allow({"x-group": "admin"})
    assert module.loops_and_helpers(REQUEST, {"sub": "zed"}) == Deny(403)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_could_block_or_loop_for_good_is_refused_with_the_reason(case: str) -> None:
    source, reason = REFUSED[case]
    why = impurity(module_of(source).p, KNOWN)
    assert why is not None and reason in why, why


def test_closures_classes_and_objects_are_not_plain_functions() -> None:
    lock = threading.Lock()

    def closure(request: Request, claims: dict[str, Any]) -> Allow:
        with lock:
            return Allow()

    class Policy:
        def __call__(self, request: Request, claims: dict[str, Any]) -> Allow:
            return Allow()

    assert "reads variables of an enclosing function" in (impurity(closure, KNOWN) or "")
    assert "is not a plain function" in (impurity(Policy(), KNOWN) or "")
    assert "is not a plain function" in (impurity(len, KNOWN) or "")
    # Without Allow among the known objects, a policy using it is not proven.
    assert "uses Allow (type)" in (impurity(module_of(PROVEN).admins) or "")


@pytest.fixture
def policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"xgate_test_pure_{uuid.uuid4().hex[:8]}"
    source = PROVEN + "\nimport time\n\ndef sleeps(request, claims):\n    time.sleep(0.01)\n    return Allow()\n"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_the_registry_runs_proven_functions_inline_and_says_why_others_use_the_pool(
    policies: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = PolicyRegistry()
    with caplog.at_level(logging.INFO, logger="xgate.authz"):
        assert registry.load({"admins": f"{policies}:admins", "sleeps": f"{policies}:sleeps"}) == {}
    admins, sleeps = registry.get("admins"), registry.get("sleeps")
    assert admins is not None and (admins.mode, admins.proven) == ("inline", True)
    assert sleeps is not None and (sleeps.mode, sleeps.proven) == ("thread", False)
    messages = [record.getMessage() for record in caplog.records]
    assert f"policy admins ({policies}:admins) runs inline: it only reads the request and the claims" in messages
    assert f"policy sleeps ({policies}:sleeps) runs in the policy pool: sleeps (line 43) uses time (module)" in (
        messages
    )


async def test_a_proven_policy_over_its_budget_goes_to_the_pool(
    policies: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = PolicyRegistry()
    assert registry.load({"admins": f"{policies}:admins"}) == {}
    policy = registry.get("admins")
    assert policy is not None and policy.proven
    admin = {"sub": "ann", "roles": ["admin"]}
    quick = PolicyRunner()
    slow = PolicyRunner(loop_budget=0.0)  # every call is over it
    try:
        for _ in range(3):
            assert quick.run_here(policy, REQUEST, admin).decision == Allow({"x-xgate-user": "ann"})
        assert quick.place(policy) == "inline"
        with caplog.at_level(logging.WARNING, logger="xgate.authz"):
            assert slow.run_here(policy, REQUEST, admin).outcome == "allowed"  # the late-ish answer still counts
            assert slow.place(policy) == "thread"
            assert not slow.pool.started
            verdict = await slow.run_on_loop(policy, REQUEST, admin)
        assert verdict.decision == Allow({"x-xgate-user": "ann"})
        assert slow.pool.started  # the second call ran in the pool
        [message] = [record.getMessage() for record in caplog.records]
        assert re.fullmatch(
            rf"policy admins \({policies}:admins\) took [0-9.]+ ms inline, over the 0 ms a policy proven pure may "
            r"hold the check's thread; it runs in the policy pool from now on",
            message,
        ), message
        # A policy marked @inline is the author's word: it stays where it is.
        marked = registry.policies["admins"].__class__(
            "marked", policy.path, policy.call, "inline", policy.generation, 0.0, proven=False
        )
        slow.run_here(marked, REQUEST, admin)
        assert slow.place(marked) == "inline"
    finally:
        quick.close()
        slow.close()
