"""A listener's access log: Envoy writes one JSON line per request, with what locates a fault in one place.

Each line has the trace id (the same the spans and the upstream have), the route, the upstream cluster and host,
the stage the request was dyed (the dyeing plugin's default header), the response flags and details (an authz
denial reads `ext_authz_denied`, a rate limit `request_rate_limited` or `local_rate_limited`) and the timings
in milliseconds.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2 as accesslog_v3
from envoy.config.core.v3 import substitution_format_string_pb2 as format_v3
from envoy.extensions.access_loggers.file.v3 import file_pb2 as file_v3
from envoy.extensions.access_loggers.stream.v3 import stream_pb2 as stream_v3
from envoy.type.v3 import percent_pb2 as percent_v3
from google.protobuf import struct_pb2

from xgate.config.schema import AccessLog, Listener
from xgate.translate.protos import pack

FILE_LOGGER = "envoy.access_loggers.file"
STDOUT_LOGGER = "envoy.access_loggers.stdout"
STDERR_LOGGER = "envoy.access_loggers.stderr"

FIELDS: dict[str, str] = {
    "start_time": "%START_TIME%",
    "trace_id": "%TRACE_ID%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "method": "%REQ(:METHOD)%",
    "authority": "%REQ(:AUTHORITY)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "user_agent": "%REQ(USER-AGENT)%",
    "route": "%ROUTE_NAME%",
    "stage": "%REQ(X-XGATE-STAGE)%",
    "upstream": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "status": "%RESPONSE_CODE%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "response_flags": "%RESPONSE_FLAGS%",
    "rate_limited": "%RESP(X-XGATE-RATE-LIMITED)%",
    "duration_ms": "%DURATION%",
    "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
}


def access_logs(listener: Listener) -> list[accesslog_v3.AccessLog]:
    """The listener's access loggers (none without `access_log`)."""
    settings = listener.access_log
    if settings is None:
        return []
    fields = struct_pb2.Struct()
    fields.update({**FIELDS, **settings.fields})
    log_format = format_v3.SubstitutionFormatString(json_format=fields, omit_empty_values=True)
    name, config = _logger(settings, log_format)
    logger = accesslog_v3.AccessLog(name=name, typed_config=pack(config))
    if settings.sampling < 100:
        logger.filter.runtime_filter.CopyFrom(
            accesslog_v3.RuntimeFilter(
                runtime_key=f"xgate.access_log.{listener.name}",
                percent_sampled=percent_v3.FractionalPercent(
                    numerator=round(settings.sampling * 10_000), denominator=percent_v3.FractionalPercent.MILLION
                ),
                # Decided by the request id: every Envoy a request crosses keeps or drops its line alike.
                use_independent_randomness=False,
            )
        )
    return [logger]


def _logger(
    settings: AccessLog, log_format: format_v3.SubstitutionFormatString
) -> tuple[str, stream_v3.StdoutAccessLog | stream_v3.StderrAccessLog | file_v3.FileAccessLog]:
    if settings.path == "stdout":
        return STDOUT_LOGGER, stream_v3.StdoutAccessLog(log_format=log_format)
    if settings.path == "stderr":
        return STDERR_LOGGER, stream_v3.StderrAccessLog(log_format=log_format)
    return FILE_LOGGER, file_v3.FileAccessLog(path=settings.path, log_format=log_format)
