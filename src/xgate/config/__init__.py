"""Config: the user's objects (schema), how they are read from YAML, and the located errors they produce."""

from __future__ import annotations

from xgate.config.load import ConfigSet, ObjectSource, load_file, parse_document
from xgate.config.schema import KINDS, Listener, Route, Upstream

__all__ = [
    "KINDS",
    "ConfigSet",
    "Listener",
    "ObjectSource",
    "Route",
    "Upstream",
    "load_file",
    "parse_document",
]
