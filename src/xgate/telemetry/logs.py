"""Log lines for every xgate process: text as before, or one JSON object per line with the trace id.

`xgate --log-format json <command>` (or `XGATE_LOG_FORMAT=json`, which `xgate up` hands to its children): each
record becomes `{"time", "level", "logger", "message"}`, plus `trace_id` and `span_id` when the line is written
inside a span (a service answering a traced request), and `exception` with the traceback when there is one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

from opentelemetry import trace

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the trace and span ids of the span current where it was logged."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def setup_logging(level: str, log_format: LogFormat = "text") -> None:
    """Root logging to stderr at `level`, in `log_format`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
