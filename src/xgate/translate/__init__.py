"""IR -> Envoy protos. Pure: frozen IR in, new protos out, no I/O."""

from __future__ import annotations

from xgate.translate.resources import Resources, Translator, translate

__all__ = ["Resources", "Translator", "translate"]
