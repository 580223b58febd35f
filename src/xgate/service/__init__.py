"""The skeleton every xgate service (authz, dyeing, ratelimit) runs on."""

from __future__ import annotations

from xgate.service.runner import Ready, Service, ServiceOptions, run_service

__all__ = ["Ready", "Service", "ServiceOptions", "run_service"]
