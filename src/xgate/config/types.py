"""Field types shared by the schema: names, durations, host:port, RE2 regexes."""

from __future__ import annotations

import re
from typing import Annotated, Any

import re2
from pydantic import AfterValidator, BeforeValidator, StringConstraints

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Accept 250ms / 1.5s / 2m / 1h or a bare number of seconds; return seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '250ms', '1.5s', '2m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (found := _DURATION.match(value)):
        seconds = float(found.group(1)) * _UNIT_SECONDS[found.group(2)]
    else:
        raise ValueError(f"invalid duration {value!r}: use e.g. '250ms', '1.5s', '2m' or a number of seconds")
    if seconds < 0 or seconds > 86400:
        raise ValueError(f"duration {value!r} is out of range (0 to 24h)")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def check_re2(pattern: str) -> str:
    """Compile with RE2, the engine Envoy uses, so a regex Envoy would reject never leaves the control plane."""
    options = re2.Options()
    options.log_errors = False
    try:
        re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise ValueError(f"invalid RE2 regex {pattern!r}: {detail}") from None
    return pattern


Regex = Annotated[str, AfterValidator(check_re2)]
