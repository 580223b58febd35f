"""xgate's ext_authz service (envoy.service.auth.v3): routes with a Python auth policy are checked here.

Layout: policy (the API policies are written against: Request, Allow, Deny, `inline`; loading and the
reloadable PolicyRegistry), runner (one call under a timeout, the failure answer), service (the gRPC servicer,
metrics, `serve`). The policy API is documented in policy.py's docstring and examples/policies/.
"""

from __future__ import annotations

from xgate.authz.policy import Allow, Decision, Deny, LoadedPolicy, Policy, PolicyRegistry, Request, inline, load_policy
from xgate.authz.runner import Outcome, PolicyRunner, Verdict
from xgate.authz.service import AuthorizationService, AuthzServer, serve
from xgate.errors import PolicyLoadError

__all__ = [
    "Allow",
    "AuthorizationService",
    "AuthzServer",
    "Decision",
    "Deny",
    "LoadedPolicy",
    "Outcome",
    "Policy",
    "PolicyLoadError",
    "PolicyRegistry",
    "PolicyRunner",
    "Request",
    "Verdict",
    "inline",
    "load_policy",
    "serve",
]
