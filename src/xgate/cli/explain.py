"""`xgate explain METHOD URL`: the route a request gets, the plugins that apply and where it goes, from a config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from xgate.cli.admin import admin_explain
from xgate.cli.status import StatusError
from xgate.config.directory import load_path
from xgate.errors import ConfigError
from xgate.explain import ExplainError, choose_listener, explain, parse_request
from xgate.pipeline import compile_config
from xgate.translate.matching import MatchingError


def register(app: typer.Typer) -> None:
    @app.command("explain")
    def explain_command(
        method: Annotated[str, typer.Argument(help="GET, POST, ...")],
        url: Annotated[str, typer.Argument(help="http://HOST[:PORT]/PATH[?QUERY]")],
        header: Annotated[list[str] | None, typer.Option("--header", "-H", help="NAME:VALUE, repeatable")] = None,
        listener: Annotated[str | None, typer.Option(help="the listener (default: the URL's port's)")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML")] = False,
        file: Annotated[Path | None, typer.Option("--file", "-f", help="config file or directory")] = None,
        admin: Annotated[str | None, typer.Option(help="ask the control plane at this xDS HOST:PORT, not -f")] = None,
    ) -> None:
        """Which route a request matches (Envoy's rules: host, path, headers, query, order), the plugins that
        apply with their settings, and the upstream with its endpoints. Exit 0 when a route matches, 1 when
        none does (Envoy answers 404), 2 for a bad config, URL or header. --admin: the config the control plane
        serves now, instead of a file."""
        if (file is None) == (admin is None):
            typer.echo(
                "xgate explain: give the config with -f FILE, or --admin HOST:PORT to ask a control plane", err=True
            )
            raise typer.Exit(2)
        try:
            if file is not None:
                result = _explain_file(method, url, header or [], file, listener)
            else:
                result = admin_explain(str(admin), method, url, header or [], listener)
        except ConfigError as exc:
            for issue in exc.issues:
                typer.echo(str(issue), err=True)
            raise typer.Exit(2) from None
        except (ExplainError, MatchingError, StatusError) as exc:
            typer.echo(f"xgate explain: {exc}", err=True)
            raise typer.Exit(2) from None
        text = json.dumps(result, indent=2) if as_json else yaml.safe_dump(result, sort_keys=False, allow_unicode=True)
        typer.echo(text, nl=as_json)
        raise typer.Exit(0 if result["route"] is not None else 1)


def _explain_file(method: str, url: str, headers: list[str], file: Path, listener: str | None) -> dict[str, Any]:
    request = parse_request(method, url, headers)  # a bad URL is told before the config is read
    compiled = compile_config(load_path(file))
    return explain(compiled, request, choose_listener(compiled, url, listener))
