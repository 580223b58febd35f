"""Field types shared by the schema: names, durations, host:port, RE2 regexes."""

from __future__ import annotations

import re
from typing import Annotated, Any

import re2
from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, StringConstraints

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$"
_DURATION = re.compile(DURATION_PATTERN)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
MAX_DURATION = 86400.0


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
    if seconds < 0 or seconds > MAX_DURATION:
        raise ValueError(f"duration {value!r} is out of range (0 to 24h)")
    return seconds


def format_duration(seconds: float) -> str | float:
    """The shortest text that reads back as `seconds`: 0.25 -> '250ms', 1.5 -> '1.5s', 90 -> '90s', 7200 ->
    '2h'; what `get` prints and etcd stores, so a duration reads as the user would write it, not as 5.0."""
    found: list[tuple[int, bool, int, str]] = []
    for rank, (unit, factor) in enumerate((("s", 1.0), ("ms", 0.001), ("m", 60.0), ("h", 3600.0))):
        text = format(seconds / factor, ".9g") + unit
        try:
            exact = abs(parse_duration(text) - seconds) <= 1e-9 * max(1.0, seconds)
        except ValueError:  # an exponent such as 1e-05 is not a duration
            continue
        if exact:
            found.append((len(text), "." in text, rank, text))  # shortest, then no decimal point
    return min(found)[3] if found else seconds


# What a user may write for a duration (the JSON schema says so too): seconds, or a number and a unit.
DurationInput = (
    Annotated[float, Field(ge=0, le=MAX_DURATION)] | Annotated[str, StringConstraints(pattern=DURATION_PATTERN)]
)
Duration = Annotated[
    float,
    BeforeValidator(parse_duration, json_schema_input_type=DurationInput),
    PlainSerializer(format_duration, when_used="json"),
]


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
