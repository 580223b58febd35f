"""One function from config objects to Envoy resources, shared by the control plane and the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from xgate.config.load import ConfigSet
from xgate.config.schema import Route
from xgate.heap import gc_paused
from xgate.ir import GatewayIR
from xgate.ir.build import RouteContext, build_ir_and_context
from xgate.ir.policies import PolicyResolver
from xgate.translate import Resources, Translator


@dataclass(frozen=True)
class Compiled:
    ir: GatewayIR
    resources: Resources
    context: RouteContext


def compile_config(
    config: ConfigSet,
    revision: str = "",
    translator: Translator | None = None,
    lenient: bool = False,
    fallback: Mapping[str, Route] | None = None,
    policies: PolicyResolver | None = None,
) -> Compiled:
    """Validate references, build the IR and translate it; raises ConfigError with every issue
    (or, `lenient`, leaves bad objects out: see build_ir).

    A long-lived `translator` remembers the previous revision and translates only what changed; a long-lived
    `policies` imports a policy module again only when its source changed (and keeps notes, see ir/policies.py).
    """
    with gc_paused():
        ir, context = build_ir_and_context(config, revision, lenient=lenient, fallback=fallback, policies=policies)
        return Compiled(ir=ir, resources=(translator or Translator(remember=False)).translate(ir), context=context)
