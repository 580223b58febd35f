"""The xDS client xgate's services are configured with (a package of its own: services must not import the
server side, which depends on the translator)."""

from __future__ import annotations

from xgate.xdsclient.client import Apply, ClientHealth, Subscription, TypeHealth, XdsClient

__all__ = ["Apply", "ClientHealth", "Subscription", "TypeHealth", "XdsClient"]
