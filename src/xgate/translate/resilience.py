"""Resilience settings -> Envoy: a cluster's health checks, outlier detection, circuit breakers and panic
threshold; a route's retry policy and timeouts; a listener's idle timeouts."""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2 as circuit_breaker_v3
from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.cluster.v3 import outlier_detection_pb2 as outlier_detection_v3
from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.core.v3 import health_check_pb2 as health_check_v3
from envoy.config.core.v3 import protocol_pb2 as protocol_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2 as previous_hosts_v3
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2 as previous_priorities_v3,
)
from envoy.type.v3 import percent_pb2 as percent_v3
from envoy.type.v3 import range_pb2 as range_v3
from google.protobuf import wrappers_pb2

from xgate.config.resilience import CircuitBreakers, HealthCheck, OutlierDetection, Retries
from xgate.config.schema import Listener, Route, Upstream
from xgate.translate.protos import duration, pack

PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
# How often a retry may pick again when it drew an endpoint already tried: with round robin the second draw
# is another endpoint; random balancing over 3 endpoints draws a tried one 5 times in a row 1 time in 243.
HOST_SELECTION_ATTEMPTS = 5
PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"
# Tries per priority before a retry moves on to the next one (backups, or a split's next upstream): two, so a
# single dead primary is retried on another primary, and primaries that all just failed send the third try on.
TRIES_PER_PRIORITY = 2


def _uint(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def apply_cluster_resilience(cluster: cluster_v3.Cluster, upstream: Upstream) -> None:
    """Health checks, outlier detection, circuit breakers and the panic threshold of `upstream`."""
    if upstream.health_check is not None:
        cluster.health_checks.append(health_check(upstream.health_check))
    if upstream.outlier_detection is not None:
        cluster.outlier_detection.CopyFrom(outlier_detection(upstream.outlier_detection))
    cluster.circuit_breakers.CopyFrom(circuit_breakers(upstream.circuit_breakers))
    if upstream.panic_threshold != 50:  # Envoy's default
        threshold = percent_v3.Percent(value=float(upstream.panic_threshold))
        cluster.common_lb_config.healthy_panic_threshold.CopyFrom(threshold)


def upstream_http_options(upstream: Upstream) -> protocol_v3.HttpProtocolOptions | None:
    """The common HTTP options of the upstream's connections (idle timeout), if any differ from Envoy's."""
    if upstream.idle_timeout is None:
        return None
    return protocol_v3.HttpProtocolOptions(idle_timeout=duration(upstream.idle_timeout))


def health_check(check: HealthCheck) -> health_check_v3.HealthCheck:
    # Envoy checks a cluster that has had no traffic only once a minute by default (no_traffic_interval); a
    # canary or a backup may get none for a while, and failover must still know at once when it goes down.
    proto = health_check_v3.HealthCheck(
        timeout=duration(check.timeout),
        interval=duration(check.interval),
        no_traffic_interval=duration(check.interval),
        unhealthy_threshold=_uint(check.unhealthy_threshold),
        healthy_threshold=_uint(check.healthy_threshold),
    )
    if check.type == "grpc":
        proto.grpc_health_check.service_name = check.service
        proto.grpc_health_check.authority = check.host or ""
    elif check.type == "tcp":
        proto.tcp_health_check.SetInParent()  # no payload: a connection that opens is healthy
    else:
        # Envoy's ranges are half-open: [start, end).
        statuses = [range_v3.Int64Range(start=first, end=last + 1) for first, last in check.status_ranges]
        http = health_check_v3.HealthCheck.HttpHealthCheck(path=check.path, host=check.host or "")
        http.expected_statuses.extend(statuses)
        proto.http_health_check.CopyFrom(http)
    return proto


# Envoy's own defaults of the outlier detection fields xgate sets.
_OUTLIER_DEFAULTS = {
    "consecutive_5xx": 5,
    "consecutive_gateway_failure": 5,
    "consecutive_local_origin_failure": 5,
    "enforcing_consecutive_5xx": 100,
    "enforcing_consecutive_gateway_failure": 0,
    "enforcing_consecutive_local_origin_failure": 100,
    "enforcing_failure_percentage": 0,
    "enforcing_failure_percentage_local_origin": 0,
    "failure_percentage_threshold": 85,
    "failure_percentage_request_volume": 50,
    "failure_percentage_minimum_hosts": 5,
    "enforcing_success_rate": 100,
    "enforcing_local_origin_success_rate": 100,
    "success_rate_stdev_factor": 1900,
    "success_rate_minimum_hosts": 5,
    "success_rate_request_volume": 100,
}
ENVOY_LIMIT = 1024  # Envoy's default of each circuit breaker but retries


def outlier_detection(settings: OutlierDetection) -> outlier_detection_v3.OutlierDetection:
    proto = outlier_detection_v3.OutlierDetection(
        # Local failures (refused or reset connections, timeouts) have counters of their own, so an endpoint
        # that cannot be reached is ejected on them alone, whatever its HTTP answers were.
        split_external_local_origin_errors=True,
        interval=duration(settings.interval),
        base_ejection_time=duration(settings.base_ejection_time),
        max_ejection_time=duration(settings.max_ejection_time),
        max_ejection_percent=_uint(settings.max_ejection_percent),
        # max_ejection_percent counts the ejection about to happen: 50% of 1 endpoint would eject none, so
        # the first one is always ejected (a single endpoint ejected sends its traffic to a fallback, or, with
        # none, Envoy's panic routing still tries it).
        always_eject_one_host=wrappers_pb2.BoolValue(value=True),
        # An endpoint ejected for failing requests stays out for its ejection time even if its health check
        # passes: a /healthz that answers while requests fail would otherwise bring it back every interval.
        successful_active_health_check_uneject_host=wrappers_pb2.BoolValue(value=False),
    )
    counts = (
        ("consecutive_5xx", "enforcing_consecutive_5xx", settings.consecutive_5xx),
        ("consecutive_gateway_failure", "enforcing_consecutive_gateway_failure", settings.consecutive_gateway_errors),
        (
            "consecutive_local_origin_failure",
            "enforcing_consecutive_local_origin_failure",
            settings.consecutive_local_failures,
        ),
    )
    values: dict[str, int] = {}
    for field, enforcing, count in counts:
        values[field] = count or 1  # Envoy needs a count: a rule is switched off by enforcing it 0% of the time
        values[enforcing] = 100 if count else 0
    share, rate = settings.failure_percentage, settings.success_rate
    values["enforcing_failure_percentage"] = 100 if share is not None and share.include_5xx else 0
    values["enforcing_failure_percentage_local_origin"] = 100 if share is not None else 0
    if share is not None:
        values["failure_percentage_threshold"] = share.threshold
        values["failure_percentage_request_volume"] = share.request_volume
        values["failure_percentage_minimum_hosts"] = share.minimum_hosts
    values["enforcing_success_rate"] = values["enforcing_local_origin_success_rate"] = 100 if rate else 0
    if rate is not None:
        values["success_rate_stdev_factor"] = round(rate.stdev_factor * 1000)  # Envoy divides by 1000
        values["success_rate_minimum_hosts"] = rate.minimum_hosts
        values["success_rate_request_volume"] = rate.request_volume
    for field, value in values.items():
        if value != _OUTLIER_DEFAULTS.get(field):  # Envoy's defaults are left out, as in every translation
            getattr(proto, field).value = value
    return proto


def circuit_breakers(settings: CircuitBreakers) -> circuit_breaker_v3.CircuitBreakers:
    budget = circuit_breaker_v3.CircuitBreakers.Thresholds.RetryBudget(
        budget_percent=percent_v3.Percent(value=settings.retry_budget.percent),
        min_retry_concurrency=_uint(settings.retry_budget.min_concurrency),
    )
    thresholds = circuit_breaker_v3.CircuitBreakers.Thresholds(
        priority=base_v3.RoutingPriority.DEFAULT,
        retry_budget=budget,
        # The remaining_* gauges say how close each limit is, before a 503 does.
        track_remaining=True,
    )
    for field in ("max_connections", "max_pending_requests", "max_requests"):
        if (limit := getattr(settings, field)) != ENVOY_LIMIT:
            getattr(thresholds, field).value = limit
    return circuit_breaker_v3.CircuitBreakers(thresholds=[thresholds])


def retry_policy(retries: Retries, conditions: tuple[str, ...]) -> route_components_v3.RetryPolicy:
    """Envoy's retry policy for `conditions` (all of `retries`, or the safe subset for other methods)."""
    policy = route_components_v3.RetryPolicy(
        retry_on=",".join(conditions),
        num_retries=_uint(retries.attempts),
        # Never the same endpoint twice: a retry on the endpoint that just failed mostly fails again.
        retry_host_predicate=[
            route_components_v3.RetryPolicy.RetryHostPredicate(
                name=PREVIOUS_HOSTS, typed_config=pack(previous_hosts_v3.PreviousHostsPredicate())
            )
        ],
        host_selection_retry_max_attempts=HOST_SELECTION_ATTEMPTS,
        # Until health checks or outlier detection notice that every primary is down, retries would only draw
        # primaries; this moves them on to the backups (or a split's next upstream) after two tries.
        retry_priority=route_components_v3.RetryPolicy.RetryPriority(
            name=PREVIOUS_PRIORITIES,
            typed_config=pack(previous_priorities_v3.PreviousPrioritiesConfig(update_frequency=TRIES_PER_PRIORITY)),
        ),
        retriable_status_codes=list(retries.status_codes) if "retriable-status-codes" in conditions else [],
    )
    if retries.per_try_timeout is not None:
        policy.per_try_timeout.CopyFrom(duration(retries.per_try_timeout))
    if retries.per_try_idle_timeout is not None:
        policy.per_try_idle_timeout.CopyFrom(duration(retries.per_try_idle_timeout))
    backoff = retries.backoff
    if backoff.base != 0.025 or backoff.max is not None:  # else Envoy's own default: 25 ms, at most 250 ms
        policy.retry_back_off.base_interval.CopyFrom(duration(backoff.base))
        if backoff.max is not None:
            policy.retry_back_off.max_interval.CopyFrom(duration(backoff.max))
    return policy


def route_timeouts(action: route_components_v3.RouteAction, route: Route) -> None:
    if route.timeout is not None:
        action.timeout.CopyFrom(duration(route.timeout))
    if route.idle_timeout is not None:
        action.idle_timeout.CopyFrom(duration(route.idle_timeout))
    if route.max_stream_duration is not None:
        action.max_stream_duration.max_stream_duration.CopyFrom(duration(route.max_stream_duration))


def apply_listener_timeouts(manager: hcm_v3.HttpConnectionManager, listener: Listener) -> None:
    """The downstream side: idle connections and idle streams (requests); Envoy's defaults when not set."""
    if listener.idle_timeout is not None:
        manager.common_http_protocol_options.idle_timeout.CopyFrom(duration(listener.idle_timeout))
    if listener.stream_idle_timeout is not None:
        manager.stream_idle_timeout.CopyFrom(duration(listener.stream_idle_timeout))
