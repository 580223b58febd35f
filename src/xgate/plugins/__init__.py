"""Every plugin's settings and contract, shared by the IR, the translator and the services; the filter order.

Each plugin has a module here (its settings model, the constants Envoy's config and its service agree on,
and its config-level checks) and one in `xgate.translate.plugins` (its Envoy filters, per-route config and
resources). Adding a plugin means one module in each and one line in each registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xgate.plugins.base import PluginSpec
from xgate.plugins.cors import CorsSpec
from xgate.plugins.dyeing import DyeingSpec
from xgate.plugins.grpc_web import GrpcWebSpec
from xgate.plugins.jwt import JwtSpec
from xgate.plugins.policy import PolicySpec
from xgate.plugins.rate_limit import RateLimitSpec
from xgate.plugins.tracing import TracingSpec

# The order of HTTP filters on every listener. CORS answers preflight requests first, so a browser's
# OPTIONS never needs a token; gRPC-Web next, so that a refusal by any later filter (401, 403, 429) reaches
# a gRPC-Web client as a gRPC status it can read; later plugins go after it in this order: authentication
# (jwt), Python policy, dyeing (may need verified claims), rate limits (may key on claims or stage). The
# router is always last and is added by the listener translator. tracing adds no filter (it sets up the
# connection manager's tracer), so its place does not matter.
FILTER_ORDER: tuple[str, ...] = ("cors", "grpc_web", "jwt", "policy", "dyeing", "rate_limit", "tracing")

PLUGINS: Mapping[str, PluginSpec[Any]] = {
    spec.name: spec
    for spec in (CorsSpec(), GrpcWebSpec(), JwtSpec(), PolicySpec(), DyeingSpec(), RateLimitSpec(), TracingSpec())
}

assert tuple(PLUGINS) == FILTER_ORDER, "FILTER_ORDER and PLUGINS disagree"

__all__ = ["FILTER_ORDER", "PLUGINS", "PluginSpec"]
