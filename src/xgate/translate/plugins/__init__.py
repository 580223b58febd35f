"""The Envoy side of every plugin, by name, in filter order (xgate.plugins.FILTER_ORDER)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xgate.plugins import FILTER_ORDER
from xgate.translate.plugins.base import PluginTranslator
from xgate.translate.plugins.cors import CorsTranslator
from xgate.translate.plugins.dyeing import DyeingTranslator
from xgate.translate.plugins.grpc_web import GrpcWebTranslator
from xgate.translate.plugins.jwt import JwtTranslator
from xgate.translate.plugins.policy import PolicyTranslator
from xgate.translate.plugins.rate_limit import RateLimitTranslator
from xgate.translate.plugins.tracing import TracingTranslator
from xgate.translate.protos import pack

TRANSLATORS: Mapping[str, PluginTranslator[Any]] = {
    translator.name: translator
    for translator in (
        CorsTranslator(),
        GrpcWebTranslator(),
        JwtTranslator(),
        PolicyTranslator(),
        DyeingTranslator(),
        RateLimitTranslator(),
        TracingTranslator(),
    )
}

assert tuple(TRANSLATORS) == FILTER_ORDER, "every plugin needs a translator, in filter order"

__all__ = ["TRANSLATORS", "PluginTranslator", "pack"]
