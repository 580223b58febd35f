"""The guard against a change that would leave Envoys serving nothing: no listener, or every route gone at once.

Such a config is valid, and it is what a truncated save, an emptied file or a mistaken `etcdctl del --prefix`
looks like: served, Envoy closes every port (or answers 404 to everything) within milliseconds. So the control
plane holds it back and reports why, from any source, unless it runs with `--allow-empty`; `xgate validate`
warns about the same configs with the same reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

# Where the user opts in; part of every reason, so the log line and `xgate status` say how to get past.
OPT_IN = "--allow-empty"


@dataclass(frozen=True)
class Served:
    """What one revision serves, in the two numbers the guard looks at."""

    listeners: int
    routes: int


def hold_back(before: Served | None, after: Served) -> str | None:
    """Why `after` must not replace `before` (None: nothing is served yet), or None when it may.

    A config without a listener is held back even at start: an Envoy would get nothing to serve. A config
    without routes is fine at start (listeners and upstreams first, routes later, as `xgate apply` writes a
    new config in batches), but not as a change from one that had routes.
    """
    if after.listeners == 0:
        if before is not None and before.listeners > 0:
            return (
                f"it removes every listener ({before.listeners} served): every Envoy would close its ports "
                f"(an emptied or truncated file?)"
            )
        return "it has no listener: an Envoy would have nothing to serve (an empty config?)"
    if before is not None and before.routes > 0 and after.routes == 0:
        return f"it removes every route ({before.routes} served): every request would get 404"
    return None


def held_back_message(reason: str) -> str:
    """The message of the issue a held-back revision is reported with."""
    return f"held back: {reason}; the last good config keeps serving ({OPT_IN} serves such a change)"
