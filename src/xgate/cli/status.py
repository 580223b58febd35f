"""`xgate status`: read a control plane's status report, say in words what it means, and judge it (the exit code)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import typer

from xgate.errors import XgateError


class StatusError(XgateError):
    """The URL does not answer as an xgate control plane's status API; the message says why, in one line."""


def fetch_status(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET `url`/status and check it is an xgate status report.

    Errors: StatusError when the URL is not an http(s) URL, nothing answers there, or what answers is not xgate.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StatusError(f"{url!r} is not a URL of a control plane's status API (like http://127.0.0.1:18080)")
    target = url.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise StatusError(f"{target} answered HTTP {exc.code}: not an xgate control plane's status API") from None
    except urllib.error.URLError as exc:
        raise StatusError(f"cannot reach the control plane at {url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise StatusError(f"cannot reach the control plane at {url}: {exc or type(exc).__name__}") from None
    try:
        report = json.loads(body)
    except ValueError:
        raise StatusError(f"{target} answered, but not with JSON: not an xgate control plane's status API") from None
    if not _is_report(report):
        raise StatusError(f"{target} answered JSON that is not an xgate status report")
    return report  # type: ignore[no-any-return]


def _is_report(report: Any) -> bool:
    return (
        isinstance(report, dict)
        and isinstance(report.get("config"), dict)
        and isinstance(report.get("proxies"), list)
        and isinstance(report.get("all_in_sync"), bool)
        and all(isinstance(proxy, dict) for proxy in report["proxies"])
    )


def status_ok(report: dict[str, Any]) -> bool:
    """Every Envoy and service instance has the current revision, the last change of every source was accepted
    (by the control plane and by every service), every object is served as configured, every source is
    reachable."""
    config = report["config"]
    config_ok = not (
        config.get("rejected_revision")
        or config.get("issues")
        or config.get("objects_not_served")
        or config.get("refused")
    )
    sources_ok = all(health.get("connected") for health in (report.get("sources") or {}).values())
    return bool(report["all_in_sync"]) and config_ok and sources_ok


def _revision_line(report: dict[str, Any]) -> str:
    """What the current revision is and whether the Envoys serve it (a NACKed revision is not "serving")."""
    config = report["config"]
    revision = report.get("revision") or config.get("applied_revision")
    if revision is None:
        return "config: nothing served yet"
    proxies = report["proxies"]
    if not proxies:
        return f"config revision {revision} (no Envoy connected)"
    if report["all_in_sync"]:
        return f"config revision {revision} (serving)"
    refused = [proxy for proxy in proxies if revision in _rejected_revisions(proxy)]
    if refused:
        return (
            f"config revision {revision} REJECTED by {len(refused)} of {len(proxies)} Envoys "
            "(each keeps serving the last revision it accepted)"
        )
    have = sum(1 for proxy in proxies if proxy.get("in_sync"))
    return f"config revision {revision} (not on every Envoy yet: {have} of {len(proxies)} have it)"


def _rejected_revisions(proxy: dict[str, Any]) -> set[str]:
    details = (proxy.get("types") or {}).values()
    return {detail["rejection"]["revision"] for detail in details if detail.get("rejection")}


def print_status(report: dict[str, Any]) -> None:
    config = report["config"]
    typer.echo(_revision_line(report))
    if config.get("rejected_revision") or config.get("issues"):
        typer.echo(f"last change REJECTED (revision {config.get('rejected_revision') or 'unknown'}):")
        for issue in config.get("issues") or []:
            typer.echo(f"  {issue}")
    not_served = config.get("objects_not_served") or []
    if not_served:
        typer.echo(f"{len(not_served)} object{'s' if len(not_served) != 1 else ''} NOT served as configured:")
        for warning in not_served:
            typer.echo(f"  {warning}")
    notes = config.get("notes") or []
    if notes:
        typer.echo(f"{len(notes)} note{'s' if len(notes) != 1 else ''} (served as configured):")
        for note in notes:
            typer.echo(f"  {note}")
    for name, health in (report.get("sources") or {}).items():
        if health.get("connected"):
            typer.echo(f"source {name}: connected, revision {health.get('revision')}")
            continue
        since = health.get("outage_since")
        when = f" for {time.time() - since:.0f} s" if isinstance(since, (int, float)) else ""
        typer.echo(f"source {name}: UNREACHABLE{when} ({health.get('last_error')})")
        typer.echo(f"  last revision read {health.get('revision')}; changes made since then have not reached any Envoy")
    _print_refusal(config.get("refused"))
    _print_fleet(report.get("fleet"))
    proxies = report["proxies"]
    if not proxies:
        typer.echo("no Envoy connected")
    for proxy in [*proxies, *(report.get("services") or [])]:
        state = "in sync" if proxy.get("in_sync") else "NOT in sync"
        kind = "" if proxy.get("kind", "envoy") == "envoy" else f"{proxy['kind']} "
        typer.echo(f"{kind}{proxy.get('node')} ({proxy.get('peer')}): {state}, revision {proxy.get('synced_revision')}")
        for kind, detail in (proxy.get("types") or {}).items():
            rejection = detail.get("rejection")
            if rejection:
                typer.echo(f"  {kind} rejected revision {rejection['revision']}: {rejection['message']}")
                typer.echo(f"    from: {', '.join(rejection['objects'])}")


def _print_fleet(fleet: Any) -> None:
    """What the Envoys and authz instances say: fail-open paths taken lately, JWKS health per provider."""
    if not isinstance(fleet, dict):
        return
    for consumer in fleet.get("consumers") or []:
        for jwks in consumer.get("jwks") or []:
            typer.echo(f"jwt provider {jwks.get('provider')} ({consumer.get('kind')} {consumer.get('node')}): "
                       f"{_jwks_state(jwks)}")  # fmt: skip
    warnings = fleet.get("warnings") or []
    if warnings:
        typer.echo(f"{len(warnings)} WARNING{'S' if len(warnings) != 1 else ''} from the fleet:")
        for warning in warnings:
            typer.echo(f"  {warning}")


def _jwks_state(jwks: dict[str, Any]) -> str:
    parts = []
    if jwks.get("kids") is not None:
        parts.append(f"{jwks.get('keys', len(jwks['kids']))} keys ({', '.join(jwks['kids']) or 'no kid'})")
    if "fetch_success" in jwks:
        parts.append(f"{jwks['fetch_success']:.0f} fetches ok, {jwks.get('fetch_failed', 0):.0f} failed")
    last = jwks.get("last_success") or jwks.get("last_success_seen")
    if isinstance(last, int | float):
        parts.append(f"last good fetch {time.time() - last:.0f} s ago")
    if jwks.get("failing"):
        parts.append(f"FAILING: {jwks.get('last_error')}")
    return ", ".join(parts) or "no fetch yet"


def _print_refusal(refused: Any) -> None:
    """A revision one of the services refused (so no Envoy got it): who, and why."""
    if isinstance(refused, dict):
        typer.echo(f"last change REFUSED by {refused['service']} {refused['node']} (revision {refused['revision']}):")
        typer.echo(f"  {refused['message']}")
        typer.echo("  the Envoys keep the revision before it; fix the config and save again")
