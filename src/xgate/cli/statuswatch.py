"""`xgate status --watch`: the status report again every few seconds, as text or as one JSON document a line."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from datetime import UTC, datetime
from typing import Any

import typer

from xgate.cli.status import StatusError, fetch_status, print_status, status_ok

CLEAR = "\x1b[H\x1b[2J"


def render(report: dict[str, Any]) -> str:
    """What `xgate status` prints for `report`."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        print_status(report)
    return buffer.getvalue()


def watch_status(
    url: str, output: str, interval: float, count: int | None, fetch: Callable[[str], dict[str, Any]] = fetch_status
) -> int:
    """Fetch and show the report every `interval` seconds, `count` times (None: until Ctrl-C). A control plane
    that stops answering is shown as such and watched on (it may be restarting). Returns the exit code the last
    report gives (0 in sync, 1 not, 2 unreachable); Ctrl-C gives the same. `fetch`: how a report is read
    (cli.admin's admin_status with --admin)."""
    code = 2
    shown = 0
    tty = sys.stdout.isatty()
    try:
        while count is None or shown < count:
            started = time.monotonic()
            now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            try:
                report: dict[str, Any] | None = fetch(url)
                error = None
            except StatusError as exc:
                report, error = None, str(exc)
            code = 2 if report is None else 0 if status_ok(report) else 1
            if output == "json":
                line = {"time": now, "ok": code == 0, "report": report, "error": error}
                typer.echo(json.dumps(line, separators=(",", ":")))
            else:
                head = f"{CLEAR}" if tty else "" if shown == 0 else "\n"
                body = render(report) if report is not None else f"control plane unreachable: {error}\n"
                typer.echo(f"{head}{now}  (every {interval:g} s, Ctrl-C to stop)\n{body}", nl=False)
            sys.stdout.flush()
            shown += 1
            if count is None or shown < count:
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        pass
    return code
