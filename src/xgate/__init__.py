"""xgate: an API gateway with a Python xDS control plane for a real Envoy data plane."""

from __future__ import annotations

from xgate.errors import ConfigError, ConfigIssue, XgateError

__all__ = ["ConfigError", "ConfigIssue", "XgateError", "__version__"]

__version__ = "0.1.0"
