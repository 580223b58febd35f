"""`xgate config-dump`: what the control plane last sent to one Envoy, as YAML, with secrets redacted."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Annotated, Any

import typer

from xgate.cli.status import StatusError, fetch_status


def fetch_dump(url: str, node: str | None, timeout: float = 5.0) -> dict[str, Any]:
    """GET `url`/config_dump for `node` (None: the only Envoy).

    Errors: StatusError when the URL is not an xgate control plane or it has no such consumer (its reason)."""
    fetch_status(url, timeout)  # the same checks and messages as `xgate status` for a wrong URL
    query = "?" + urllib.parse.urlencode({"node": node}) if node else ""
    target = url.rstrip("/") + "/config_dump" + query
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read())["error"]
        except (ValueError, KeyError, TypeError):
            reason = f"{target} answered HTTP {exc.code} (a control plane older than config-dump?)"
        raise StatusError(reason) from None
    except (urllib.error.URLError, OSError) as exc:
        raise StatusError(f"cannot reach the control plane at {url}: {exc}") from None
    dump: dict[str, Any] = json.loads(body)
    return dump


def register(app: typer.Typer) -> None:
    @app.command("config-dump")
    def config_dump(
        node: Annotated[str | None, typer.Option(help="node id (default: the only Envoy connected)")] = None,
        url: Annotated[str, typer.Option(help="control plane status API")] = "http://127.0.0.1:18080",
        as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML")] = False,
        admin: Annotated[
            str | None, typer.Option(help="ask the admin API at the xDS HOST:PORT instead of --url")
        ] = None,
    ) -> None:
        """What the control plane last sent to one Envoy (listeners, clusters, endpoints, routes, secrets
        redacted), with the version of each type and whether it was ACKed. Exit 2 when there is no such node."""
        from xgate.cli.admin import admin_dump
        from xgate.cli.render import dump_yaml

        try:
            dump = admin_dump(admin, node) if admin else fetch_dump(url, node)
        except StatusError as exc:
            typer.echo(f"xgate config-dump: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(json.dumps(dump, indent=2) if as_json else dump_yaml(dump), nl=as_json)
