"""The policy API: loading by import path, Allow/Deny, the runner's failure answers, reloading, the examples."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import xgate.authz
from xgate.authz import (
    Allow,
    Deny,
    LoadedPolicy,
    PolicyLoadError,
    PolicyRegistry,
    PolicyRunner,
    Request,
    inline,
    load_policy,
)
from xgate.authz.policy import _mode
from xgate.errors import XgateError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "policies"
REQUEST = Request(method="GET", path="/admin?x=1", headers={"host": "a"}, source="10.0.0.7", route="admin-route")

ModuleFactory = Callable[..., str]


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleFactory]:
    """Writes a module with the given source under a unique name (rewritable: call again with the same name)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(source: str, name: str | None = None) -> str:
        name = name or f"xgate_test_policies_{uuid.uuid4().hex[:12]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield
    sys.modules.pop("xgate_example_policies", None)


def loaded(call: Callable[..., Any], name: str = "p") -> LoadedPolicy:
    return LoadedPolicy(name, f"tests:{name}", call, _mode(call))


def test_public_api() -> None:
    assert {"Allow", "Deny", "Request", "PolicyRegistry", "load_policy", "inline", "serve"} <= set(xgate.authz.__all__)
    assert issubclass(PolicyLoadError, XgateError)


# -- Allow, Deny, Request ----------------------------------------------------------------------------------------


def test_decisions_are_frozen_validated_and_lower_case_their_headers() -> None:
    allow = Allow({"X-User": "ann"})
    assert dict(allow.headers) == {"x-user": "ann"}
    with pytest.raises(AttributeError):
        allow.headers = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        allow.headers["x"] = "y"  # type: ignore[index]
    assert Deny() == Deny(403, "", {})
    assert Deny(302, headers={"Location": "/login"}).headers == {"location": "/login"}
    for status in (200, 600, 0, "403", True, 403.0):
        with pytest.raises(ValueError, match="Deny status"):
            Deny(status)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        Allow({"x-user": "ann\r\nx-admin: 1"})  # a value must not smuggle a second header
    for name in ("", "x user", ":path", "x\n"):
        with pytest.raises(ValueError, match="not a valid HTTP header name"):
            Allow({name: "v"})
    with pytest.raises(TypeError):
        Allow({"x-n": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        Deny(body=b"bytes")  # type: ignore[arg-type]


# -- loading ----------------------------------------------------------------------------------------------------


def test_load_policy_functions_async_functions_classes_and_dotted_names(module: ModuleFactory) -> None:
    name = module(
        """
        from xgate.authz import Allow, inline
        def plain(request, claims): return Allow()
        async def coroutine(request, claims): return Allow()
        @inline
        def quick(request, claims): return Allow()
        class Counter:
            def __init__(self): self.calls = 0
            def __call__(self, request, claims):
                self.calls += 1
                return Allow()
        class AsyncClass:
            async def __call__(self, request, claims): return Allow()
        class Holder:
            @staticmethod
            def check(request, claims): return Allow()
        """
    )
    modes = {attr: _mode(load_policy(f"{name}:{attr}")) for attr in ("plain", "coroutine", "quick", "AsyncClass")}
    assert modes == {"plain": "thread", "coroutine": "async", "quick": "inline", "AsyncClass": "async"}
    counter = load_policy(f"{name}:Counter")
    assert type(counter).__name__ == "Counter"  # the class was instantiated once
    counter(REQUEST, {})
    assert counter.calls == 1  # type: ignore[attr-defined]
    assert load_policy(f"{name}:Holder.check")(REQUEST, {}) == Allow()


def test_load_policy_errors_name_the_path(module: ModuleFactory) -> None:
    broken = module("raise RuntimeError('boom at import')\n")
    exits = module("import sys\nsys.exit(3)\n")
    good = module(
        """
        VALUE = 3
        class Needs:
            def __init__(self, arg): pass
        class NoCall:
            pass
        """
    )
    cases = {
        "no_colon_here": "not an import path",
        f"{good}:": "not an import path",
        "a b:c": "not an import path",
        "xgate_no_such_module_anywhere:f": "ModuleNotFoundError",
        f"{broken}:f": "RuntimeError: boom at import",
        f"{exits}:f": "SystemExit",
        f"{good}:missing": "has no attribute missing",
        f"{good}:VALUE": "not callable (it is a int)",
        f"{good}:Needs": "Needs() failed: TypeError",
        f"{good}:NoCall": "has no __call__",
    }
    for path, message in cases.items():
        with pytest.raises(PolicyLoadError, match=re.escape(message)) as caught:
            load_policy(path)
        assert caught.value.path == path
        assert repr(path) in str(caught.value)


# -- running: answers and failures --------------------------------------------------------------------------------


async def test_runner_passes_request_and_claims_and_returns_the_decision() -> None:
    seen: list[tuple[Request, dict[str, Any]]] = []

    def policy(request: Request, claims: dict[str, Any]) -> Allow | Deny:
        seen.append((request, claims))
        return Allow({"x-user": claims["sub"]}) if "admin" in claims.get("roles", []) else Deny(401, "no")

    runner = PolicyRunner()
    try:
        verdict = await runner.run(loaded(policy), REQUEST, {"sub": "ann", "roles": ["admin"]})
        assert (verdict.decision, verdict.outcome) == (Allow({"x-user": "ann"}), "allowed")
        verdict = await runner.run(loaded(policy), REQUEST, {})
        assert (verdict.decision, verdict.outcome) == (Deny(401, "no"), "denied")
        assert seen[0] == (REQUEST, {"sub": "ann", "roles": ["admin"]})
    finally:
        runner.close()


async def test_raising_and_garbage_policies_deny_and_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def async_coroutine() -> Allow:
        return Allow()

    def returns_coroutine(request: Request, claims: dict[str, Any]) -> Any:
        return async_coroutine()  # never awaited: the runner closes it (no "never awaited" warning)

    def raises(request: Request, claims: dict[str, Any]) -> Allow:
        raise KeyError("sub")

    async def raises_async(request: Request, claims: dict[str, Any]) -> Allow:
        raise TimeoutError("its own timeout, not ours")

    def exits(request: Request, claims: dict[str, Any]) -> Allow:
        raise SystemExit(1)

    @inline
    def raises_inline(request: Request, claims: dict[str, Any]) -> Allow:
        raise ValueError("inline")

    garbage = [None, True, "allow", 200, {"allow": True}, Allow]
    policies: list[Callable[..., Any]] = [returns_coroutine, raises, raises_async, exits, raises_inline]
    policies += [lambda request, claims, value=value: value for value in garbage]
    runner = PolicyRunner()
    try:
        with caplog.at_level(logging.ERROR, logger="xgate.authz"):
            for index, policy in enumerate(policies):
                verdict = await runner.run(loaded(policy, f"p{index}"), REQUEST, {})
                assert (verdict.decision, verdict.outcome) == (Deny(403), "errors"), policy
    finally:
        runner.close()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == len(policies)
    assert all("on route admin-route" in message and "(tests:p" in message for message in messages)
    assert "raised KeyError" in messages[1]
    assert "raised TimeoutError" in messages[2]  # a policy's own TimeoutError is an error, not our timeout
    assert "returned NoneType None, not Allow or Deny" in messages[5]


async def test_hanging_policies_time_out_and_deny(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()

    def hangs(request: Request, claims: dict[str, Any]) -> Allow:
        release.wait(5)
        return Allow()

    async def hangs_async(request: Request, claims: dict[str, Any]) -> Allow:
        await asyncio.sleep(5)
        return Allow()

    async def swallows_cancel(request: Request, claims: dict[str, Any]) -> Allow:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(5)
        return Allow()  # late: discarded

    @inline
    def slow_inline(request: Request, claims: dict[str, Any]) -> Allow:
        release.wait(0.08)
        return Allow()

    runner = PolicyRunner(timeout=0.05)
    try:
        with caplog.at_level(logging.WARNING, logger="xgate.authz"):
            for policy in (hangs, hangs_async, swallows_cancel, slow_inline):
                started = asyncio.get_running_loop().time()
                verdict = await runner.run(loaded(policy), REQUEST, {})
                assert (verdict.decision, verdict.outcome) == (Deny(403), "timeouts"), policy
                assert asyncio.get_running_loop().time() - started < 0.5
    finally:
        release.set()
        runner.close()
    assert all("over its 50 ms timeout" in record.getMessage() for record in caplog.records)
    assert "inline: it held the check's thread" in caplog.records[-1].getMessage()


async def test_failure_answer_is_configurable_including_fail_open() -> None:
    def raises(request: Request, claims: dict[str, Any]) -> Allow:
        raise RuntimeError

    for failure in (Deny(503, "authz unavailable"), Allow()):
        runner = PolicyRunner(failure=failure)
        try:
            verdict = await runner.run(loaded(raises), REQUEST, {})
        finally:
            runner.close()
        assert (verdict.decision, verdict.outcome) == (failure, "errors")


async def test_hung_threads_do_not_stop_async_policies_and_queued_calls_time_out() -> None:
    release = threading.Event()

    def hangs(request: Request, claims: dict[str, Any]) -> Allow:
        release.wait(5)
        return Allow()

    async def quick(request: Request, claims: dict[str, Any]) -> Allow:
        return Allow()

    runner = PolicyRunner(timeout=0.05, threads=1)
    try:
        assert (await runner.run(loaded(hangs), REQUEST, {})).outcome == "timeouts"  # the one thread now hangs
        assert (await runner.run(loaded(lambda r, c: Allow()), REQUEST, {})).outcome == "timeouts"  # queued
        assert (await runner.run(loaded(quick), REQUEST, {})).outcome == "allowed"
    finally:
        release.set()
        runner.close()


# -- the registry: load, reload, keep the last good version -------------------------------------------------------


def test_registry_loads_swaps_and_drops(module: ModuleFactory) -> None:
    name = module("from xgate.authz import Allow, Deny\ndef a(r, c): return Allow()\ndef d(r, c): return Deny()\n")
    registry = PolicyRegistry()
    assert registry.load({"a": f"{name}:a", "d": f"{name}:d"}) == {}
    first = registry.policies
    assert set(first) == {"a", "d"} and "a" in registry
    assert registry.get("a") is not None and registry.get("a").path == f"{name}:a"  # type: ignore[union-attr]
    assert registry.load({"d": f"{name}:a"}) == {}
    assert registry.get("a") is None and "a" in first  # the old set is untouched: swapped, not mutated
    assert registry.get("d").call(REQUEST, {}) == Allow()  # type: ignore[union-attr]


def test_failed_load_keeps_the_previous_version(module: ModuleFactory, caplog: pytest.LogCaptureFixture) -> None:
    name = module("from xgate.authz import Allow\ndef a(r, c): return Allow()\n")
    registry = PolicyRegistry()
    registry.load({"a": f"{name}:a"})
    previous = registry.get("a")
    with caplog.at_level(logging.ERROR, logger="xgate.authz"):
        errors = registry.load({"a": f"{name}:missing", "new": "xgate_no_such_module_anywhere:f"})
    assert set(errors) == {"a", "new"} and registry.errors == errors
    assert registry.get("a") is previous
    assert registry.get("new") is None
    messages = "\n".join(record.getMessage() for record in caplog.records)
    assert f"still serving {name}:a" in messages
    assert "requests for it are denied" in messages
    assert registry.load({"a": f"{name}:a"}) == {} and registry.errors == {}


def test_reload_reimports_changed_modules_and_keeps_state_otherwise(module: ModuleFactory) -> None:
    source = textwrap.dedent(
        """
        from xgate.authz import Allow
        class Counter:
            def __init__(self): self.calls = 0
            def __call__(self, request, claims):
                self.calls += 1
                return Allow({"x-version": "VERSION", "x-calls": str(self.calls)})
        """
    )
    name = module(source.replace("VERSION", "1"))
    registry = PolicyRegistry()
    mapping = {"count": f"{name}:Counter"}
    registry.load(mapping)
    policy = registry.get("count")
    assert policy is not None
    policy.call(REQUEST, {})
    registry.load(mapping)  # nothing changed: same instance, state kept
    assert registry.get("count") is policy
    assert policy.call(REQUEST, {}).headers["x-calls"] == "2"

    module(source.replace("VERSION", "2"), name)  # same size, same second: the bytecode cache must not win
    assert registry.load(mapping) == {}
    reloaded = registry.get("count")
    assert reloaded is not None and reloaded is not policy
    assert dict(reloaded.call(REQUEST, {}).headers) == {"x-version": "2", "x-calls": "1"}

    # Fails after redefining Counter: the half-executed module must not leak into the registry.
    module(source.replace("VERSION", "3") + "\nundefined_name\n", name)
    errors = registry.load(mapping)
    assert "NameError" in str(errors["count"])
    assert registry.get("count") is reloaded  # the last good version keeps serving
    assert set(registry.load(mapping)) == {"count"}  # still broken: retried, still reported
    module(source.replace("VERSION", "3") + "\ndef broken(:\n", name)
    assert "SyntaxError" in str(registry.load(mapping)["count"])
    assert registry.get("count") is reloaded

    module(source.replace("VERSION", "4"), name)
    assert registry.load(mapping) == {}
    assert registry.get("count").call(REQUEST, {}).headers["x-version"] == "4"  # type: ignore[union-attr]


# -- the example package ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("examples")
async def test_example_policies() -> None:
    registry = PolicyRegistry()
    package = "xgate_example_policies"
    assert (
        registry.load(
            {
                name: f"{package}:{name}"
                for name in ("allow_admins", "read_only", "tenant_header_matches", "QuotaPerSubject")
            }
        )
        == {}
    )
    modes = {name: (policy.mode, policy.proven) for name, policy in registry.policies.items()}
    assert modes == {
        "allow_admins": ("inline", True),  # a plain function that only reads the claims: proven, so inline
        "read_only": ("inline", False),  # marked @inline
        "tenant_header_matches": ("async", False),
        "QuotaPerSubject": ("thread", False),  # a class instance with a lock: the pool
    }
    runner = PolicyRunner()

    async def decide(name: str, claims: dict[str, Any], request: Request = REQUEST) -> Allow | Deny:
        policy = registry.get(name)
        assert policy is not None
        return (await runner.run(policy, request, claims)).decision

    try:
        assert await decide("allow_admins", {"sub": "ann", "roles": ["admin"]}) == Allow({"x-xgate-user": "ann"})
        assert await decide("allow_admins", {"sub": "bob", "roles": ["dev"]}) == Deny(403, "admins only")
        assert await decide("allow_admins", {}) == Deny(403, "admins only")
        post = Request("POST", "/", {}, "10.0.0.1", "r")
        assert await decide("read_only", {}) == Allow()
        assert (await decide("read_only", {}, post)).status == 405  # type: ignore[union-attr]
        tenant = Request("GET", "/", {"x-tenant": "acme"}, "10.0.0.1", "r")
        assert await decide("tenant_header_matches", {"tenant": "acme"}, tenant) == Allow({"x-xgate-tenant": "acme"})
        assert await decide("tenant_header_matches", {"tenant": "other"}, tenant) == Deny(403, "wrong tenant")
        quota = registry.get("QuotaPerSubject")
        assert quota is not None
        quota.call.limit = 2  # type: ignore[attr-defined]
        answers = [await decide("QuotaPerSubject", {"sub": "ann"}) for _ in range(3)]
        assert [type(answer).__name__ for answer in answers] == ["Allow", "Allow", "Deny"]
        assert answers[2].status == 429  # type: ignore[union-attr]
        assert (await decide("QuotaPerSubject", {"sub": "bob"})).headers["x-xgate-quota-remaining"] == "1"
    finally:
        runner.close()
