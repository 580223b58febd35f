"""The rate-limit service's table comes from the resources translated with the routes' actions, with the same keys."""

from __future__ import annotations

from xgate.api import RATE_LIMIT, ratelimit_pb2
from xgate.config.load import parse_document
from xgate.pipeline import compile_config
from xgate.ratelimit.config import limit_table

CONFIG = """
listeners: [{name: public, port: 10000}]
upstreams: [{name: app, endpoints: ["127.0.0.1:1"]}]
routes:
  - {name: route, upstream: app, match: {path: {prefix: /a}},
     plugins: {rate_limit: {global: {requests: 10, per: 1m}}}}
  - {name: ip, upstream: app, match: {path: {prefix: /b}},
     plugins: {rate_limit: {global: {requests: 5, algorithm: gcra, burst: 2, by: client_ip}}}}
  - {name: key, upstream: app, match: {path: {prefix: /c}},
     plugins: {rate_limit: {global: {requests: 7, by: "header:X-Api-Key", shadow: true}}}}
  - {name: subject, upstream: app, match: {path: {prefix: /d}},
     plugins: {rate_limit: {global: {requests: 3, by: "claim:sub"}}}}
  - {name: local-only, upstream: app, match: {path: {prefix: /e}}, plugins: {rate_limit: {local: {requests: 1}}}}
"""


def test_limit_table_keys_match_the_route_actions() -> None:
    config = parse_document(CONFIG, "t")
    sent = compile_config(config).resources.services[RATE_LIMIT].values()
    table = limit_table(resource for resource in sent if isinstance(resource, ratelimit_pb2.RateLimit))
    patterns = {entries: limit for (domain, entries), limit in table.limits.items() if domain == "xgate"}
    assert set(patterns) == {
        (("xgate_route", "route"),),
        (("xgate_route", "ip"), ("remote_address", None)),
        (("xgate_route", "key"), ("header_x-api-key", None)),
        (("xgate_route", "subject"), ("claim_sub", None)),
    }
    ip = patterns[(("xgate_route", "ip"), ("remote_address", None))]
    assert (ip.requests, ip.unit_seconds, ip.algorithm, ip.burst) == (5, 1.0, "gcra", 2)
    assert patterns[(("xgate_route", "key"), ("header_x-api-key", None))].shadow
    # The route's actions produce exactly these keys, in this order.
    routes = compile_config(config).resources.route_config("routes/public")
    actions = {
        route.name: [action.WhichOneof("action_specifier") for action in route.route.rate_limits[0].actions]
        for host in routes.virtual_hosts
        for route in host.routes
        if route.route.rate_limits
    }
    assert actions == {
        "route": ["generic_key"],
        "ip": ["generic_key", "remote_address"],
        "key": ["generic_key", "request_headers"],
        "subject": ["generic_key", "metadata"],
    }
