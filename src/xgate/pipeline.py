"""One function from config objects to Envoy resources, shared by the control plane and the CLI."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from xgate.config.load import ConfigSet
from xgate.ir import GatewayIR, build_ir
from xgate.translate import Resources, translate


@dataclass(frozen=True)
class Compiled:
    ir: GatewayIR
    resources: Resources


def compile_config(config: ConfigSet, revision: str = "") -> Compiled:
    """Validate references, build the IR and translate it; raises ConfigError with every issue."""
    ir = build_ir(config, revision)
    return Compiled(ir=ir, resources=translate(ir))


def revision_of(text: str | bytes) -> str:
    """A config revision id: a digest of the source content, so the same content is the same revision."""
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:12]
