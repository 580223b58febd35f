"""The plugin registry and the one place that fixes the order of HTTP filters."""

from __future__ import annotations

from collections.abc import Mapping

from xgate.translate.plugins.base import Plugin, pack
from xgate.translate.plugins.cors import CorsPlugin
from xgate.translate.plugins.dyeing import DyeingPlugin
from xgate.translate.plugins.jwt import JwtPlugin
from xgate.translate.plugins.policy import PolicyPlugin
from xgate.translate.plugins.rate_limit import RateLimitPlugin

# The order of HTTP filters on every listener. CORS answers preflight requests first, so a browser's
# OPTIONS never needs a token; later plugins go after it in this order: authentication (jwt), Python
# policy, dyeing (may need verified claims), rate limits (may key on claims or stage). The router is
# always last and is added by the listener translator.
FILTER_ORDER: tuple[str, ...] = ("cors", "jwt", "policy", "dyeing", "rate_limit")

PLUGINS: Mapping[str, Plugin] = {
    plugin.name: plugin for plugin in (CorsPlugin(), JwtPlugin(), PolicyPlugin(), DyeingPlugin(), RateLimitPlugin())
}

assert tuple(PLUGINS) == tuple(name for name in FILTER_ORDER if name in PLUGINS), "FILTER_ORDER out of date"

__all__ = ["FILTER_ORDER", "PLUGINS", "Plugin", "pack"]
