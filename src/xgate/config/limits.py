"""Per-connection limits of a listener: HTTP/2 streams and windows, request header size and count."""

from __future__ import annotations

from pydantic import Field

from xgate.config.base import Model

# Envoy's defaults, for the README and for readers: unset fields keep them.
ENVOY_DEFAULTS = {
    "max_concurrent_streams": 2147483647,
    "initial_stream_window_size": 268435456,
    "initial_connection_window_size": 268435456,
    "max_request_headers_kb": 60,
    "max_headers_count": 100,
}


class ListenerLimits(Model):
    """Limits per downstream connection; a field left out keeps Envoy's default (ENVOY_DEFAULTS). Envoy's
    edge guidance: 100 concurrent streams, 64 KiB stream and 1 MiB connection windows. A request over the
    header limits is answered 431."""

    max_concurrent_streams: int | None = Field(default=None, ge=1, le=2147483647)
    initial_stream_window_size: int | None = Field(default=None, ge=65535, le=2147483647)
    initial_connection_window_size: int | None = Field(default=None, ge=65535, le=2147483647)
    max_request_headers_kb: int | None = Field(default=None, ge=1, le=8192)
    max_headers_count: int | None = Field(default=None, ge=1, le=10000)
