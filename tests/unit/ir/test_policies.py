"""The control plane imports the policies a config names before translation: a rule is lowered (and again after
its module changed), a rule the API refuses is a config issue located at the policy, a module it cannot import
is a note (served as configured: never a status failure) and goes to xgate authz as before."""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from envoy.config.route.v3 import route_pb2 as route_v3

from xgate.api import POLICY
from xgate.config.load import parse_document
from xgate.controlplane import ControlPlane
from xgate.discovery import typeurls
from xgate.errors import ConfigError
from xgate.ir.policies import PolicyResolver
from xgate.pipeline import compile_config
from xgate.sources.revision import Revision, revision_of

Writer = Callable[[str], str]


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Writer]:
    """Writes policy module source under one unique name (call again to change it); returns that name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"xgate_test_rules_{uuid.uuid4().hex[:12]}"
    stamp = [1_000_000_000]

    def write(source: str) -> str:
        file = tmp_path / f"{name}.py"
        file.write_text(textwrap.dedent(source))
        stamp[0] += 10  # a new mtime each time, as an editor's save would give
        os.utime(file, (stamp[0], stamp[0]))
        return name

    yield write
    sys.modules.pop(name, None)


def config(name: str) -> str:
    return f"""
plugins:
  jwt: {{providers: [{{name: main, issuer: https://i.test, jwks: {{keys: [{{kty: oct, alg: HS256, k: c2VjcmV0}}]}}}}]}}
  policy:
    policies: {{admins: "{name}:admins", plain: "{name}:plain", gone: "no_such_module_{uuid.uuid4().hex[:8]}:x"}}
listeners: [{{name: public, port: 10000}}]
upstreams: [{{name: app, endpoints: ["127.0.0.1:1"]}}]
routes:
  - {{name: admin, match: {{path: {{prefix: /a}}}}, upstream: app, plugins: {{jwt: {{}}, policy: {{name: admins}}}}}}
  - {{name: plain, match: {{path: {{prefix: /p}}}}, upstream: app, plugins: {{jwt: false, policy: {{name: plain}}}}}}
  - {{name: gone, match: {{path: {{prefix: /gone}}}}, upstream: app, plugins: {{jwt: false, policy: {{name: gone}}}}}}
"""


RULE = """
from xgate.authz import Deny, claims, rule
admins = rule(claims.groups.contains({group!r}), deny=Deny(403, "admins only"))
def plain(request, claims):
    return None
"""


def revision(text: str) -> Revision:
    return Revision(revision=revision_of(text), config=parse_document(text, "gateway.yaml"))


def served(plane: ControlPlane) -> tuple[dict[str, list[str]], set[str]]:
    """Per route, the per-filter configs it has; and the policies xgate authz is sent."""
    snapshot = plane.cache.snapshot
    assert snapshot is not None
    table = route_v3.RouteConfiguration.FromString(snapshot.resources[typeurls.ROUTE]["routes/public"].data)
    filters = {route.name: sorted(route.typed_per_filter_config) for route in table.virtual_hosts[0].routes}
    return filters, set(snapshot.resources.get(POLICY, {}))


async def test_rules_are_lowered_plain_policies_and_unimportable_ones_go_to_authz(module: Writer) -> None:
    name = module(RULE.format(group="admin"))
    plane = ControlPlane()
    await plane.on_revision(revision(config(name)))
    filters, policies = served(plane)
    assert "envoy.filters.http.rbac" in filters["admin"] and "envoy.filters.http.rbac" not in filters["plain"]
    assert policies == {"plain", "gone"}  # the lowered one never goes to xgate authz
    notes = [note for note in plane.state.notes if "gone" in note]
    assert len(notes) == 1 and "not lowered, xgate authz runs it" in notes[0] and "No module named" in notes[0]
    # Served as configured (xgate authz runs it): a note in status, not an object NOT served (status exit 1).
    shown = plane.report()["config"]
    assert shown["notes"] == notes and shown["objects_not_served"] == []
    await plane.rollout.close()


async def test_a_changed_rule_module_is_imported_again(module: Writer) -> None:
    name = module(RULE.format(group="admin"))
    plane = ControlPlane()
    text = config(name)
    await plane.on_revision(revision(text))
    before = plane.cache.snapshot
    assert before is not None
    module(RULE.format(group="operators"))
    await plane.on_revision(revision(text + "\n# saved again\n"))
    after = plane.cache.snapshot
    assert after is not None and after is not before
    table = after.resources[typeurls.ROUTE]["routes/public"].data
    assert b"operators" in table and b"\x12\x05admin" not in table  # the rule's new literal, not the old one
    await plane.rollout.close()


def test_a_rule_the_api_refuses_is_a_config_issue_at_the_policy(module: Writer) -> None:
    name = module("from xgate.authz import claims, rule\nadmins = rule(claims.groups.contains([1]))\nplain = None\n")
    with pytest.raises(ConfigError) as raised:
        compile_config(parse_document(config(name), "gateway.yaml"), policies=PolicyResolver())
    messages = [str(issue) for issue in raised.value.issues]
    assert any(
        "plugins.policy.policies.admins" in m and "RuleError: claim groups.contains compares with" in m
        for m in messages
    ), messages
    assert any("route admin" in m and "policy 'admins' is refused" in m for m in messages), messages


def test_etcd_serves_the_rest_when_a_rule_is_refused(module: Writer) -> None:
    name = module("from xgate.authz import claims, rule\nadmins = rule(claims.a.equals(2**60))\nplain = None\n")
    document = parse_document(config(name), "gateway.yaml")
    compiled = compile_config(document, lenient=True, policies=PolicyResolver())
    served_routes = {route.name for listener in compiled.ir.listeners for route in listener.routes}
    assert served_routes == {"gone"}  # the module did not import: both its policies are refused
    assert any("policy 'admins' is refused" in str(issue) for issue in compiled.ir.issues)
    assert any("policy 'plain' is refused" in str(issue) for issue in compiled.ir.issues)
