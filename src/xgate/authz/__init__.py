"""xgate's ext_authz service (envoy.service.auth.v3): routes with a Python auth policy are checked here.

Layout: policy (the API policies are written against: Request, Allow, Deny, `inline`; loading and the
reloadable PolicyRegistry), rules and conditions (declarative policies: `rule(claims.groups.contains("admin")
& method.any_of("GET"))`, which the control plane lowers to Envoy's RBAC filter), runner (one call under a
timeout, the failure answer), service (the gRPC servicer, metrics, `serve`). The policy API is documented in
policy.py's and rules.py's docstrings and examples/policies/.
"""

from __future__ import annotations

from xgate.authz.conditions import Condition, all_of, any_of, not_
from xgate.authz.policy import (
    Allow,
    Decision,
    Deny,
    LoadedPolicy,
    Policy,
    PolicyRegistry,
    Request,
    cacheable,
    inline,
    load_policy,
)
from xgate.authz.rules import Rule, claims, header, method, path, rule, source
from xgate.authz.runner import Outcome, PolicyRunner, Verdict
from xgate.authz.service import AuthorizationService, AuthzServer, serve
from xgate.errors import PolicyLoadError, RuleError

__all__ = [
    "Allow",
    "AuthorizationService",
    "AuthzServer",
    "Condition",
    "Decision",
    "Deny",
    "LoadedPolicy",
    "Outcome",
    "Policy",
    "PolicyLoadError",
    "PolicyRegistry",
    "PolicyRunner",
    "Request",
    "Rule",
    "RuleError",
    "Verdict",
    "all_of",
    "any_of",
    "cacheable",
    "claims",
    "header",
    "inline",
    "load_policy",
    "method",
    "not_",
    "path",
    "rule",
    "serve",
    "source",
]
