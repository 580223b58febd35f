"""`xgate apply / diff / get / delete`: the config in etcd.

Exit codes scripts can rely on:
    0  done (apply, delete, get), or no differences (diff)
    1  diff: there are differences
    2  invalid config, or a refused delete; nothing was written. get KIND NAME: no such object, or its stored
       value is not a valid one (its problems and text go to stderr)
    3  another writer changed the keys meanwhile; nothing of this apply remains (an apply in several
       transactions undoes the ones it wrote; read again and retry)
    4  etcd unreachable
    5  apply: partly applied; an apply in several transactions wrote some, then etcd failed before they could
       be undone: the changes written are listed on stdout (apply the same files again to finish)
"""

from __future__ import annotations

import asyncio
import difflib
import json
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import typer
import yaml

from xgate.cli.etcdstore import (
    ConflictError,
    PartialApplyError,
    Plan,
    Stored,
    delete_object,
    execute,
    plan_apply,
    planned_config,
    read_stored,
    references_to,
)
from xgate.config.directory import load_path
from xgate.errors import ConfigError
from xgate.sources.etcd.client import EtcdClient, EtcdRequestError, EtcdSettings, EtcdUnavailableError
from xgate.sources.etcd.layout import (
    DEFAULT_PREFIX,
    KEY_KINDS,
    PLUGIN,
    key_of,
    normalize_prefix,
    object_data,
    parse_key,
    redacted_data,
)

EXIT_DIFFERENT, EXIT_INVALID, EXIT_CONFLICT, EXIT_UNREACHABLE, EXIT_PARTIAL = 1, 2, 3, 4, 5
T = TypeVar("T")

Etcd = Annotated[str, typer.Option("--etcd", envvar="XGATE_ETCD", help="etcd endpoints, HOST:PORT[,HOST:PORT...]")]
Prefix = Annotated[str, typer.Option("--prefix", envvar="XGATE_PREFIX", help="key prefix")]
# How to reach etcd, for every command that does. Each option has an environment variable too: `xgate up`
# hands them to its children that way (a password in an argv would show in `ps`).
ETCD_ENVIRONMENT = {
    "ca": "XGATE_ETCD_CA",
    "cert": "XGATE_ETCD_CERT",
    "key": "XGATE_ETCD_KEY",
    "user": "XGATE_ETCD_USER",
    "password": "XGATE_ETCD_PASSWORD",
}
CaFile = Annotated[
    Path | None, typer.Option("--etcd-ca", envvar=ETCD_ENVIRONMENT["ca"], help="CA bundle: talk TLS to etcd")
]
CertFile = Annotated[
    Path | None, typer.Option("--etcd-cert", envvar=ETCD_ENVIRONMENT["cert"], help="client certificate")
]
KeyFile = Annotated[Path | None, typer.Option("--etcd-key", envvar=ETCD_ENVIRONMENT["key"], help="client key")]
User = Annotated[str | None, typer.Option("--etcd-user", envvar=ETCD_ENVIRONMENT["user"])]
Password = Annotated[str | None, typer.Option("--etcd-password", envvar=ETCD_ENVIRONMENT["password"])]


def settings(
    etcd: str, ca: Path | None, cert: Path | None, key: Path | None, user: str | None, password: str | None
) -> EtcdSettings:
    return EtcdSettings.parse(etcd, ca_file=ca, cert_file=cert, key_file=key, username=user, password=password)


def _run(etcd: EtcdSettings, work: Callable[[EtcdClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with EtcdClient(etcd) as client:
            return await work(client)

    try:
        return asyncio.run(main())
    except EtcdUnavailableError as exc:
        typer.echo(f"etcd unreachable at {', '.join(etcd.endpoints)}: {exc}", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except EtcdRequestError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_INVALID) from None


def _invalid(error: ConfigError) -> typer.Exit:
    typer.echo(
        f"invalid: {len(error.issues)} issue{'s' if len(error.issues) != 1 else ''}; nothing was written", err=True
    )
    for issue in error.issues:
        typer.echo(f"  {issue}", err=True)
    return typer.Exit(EXIT_INVALID)


def _plan(file: Path, etcd: EtcdSettings, prefix: str, prune: bool = False) -> Plan:
    try:
        config = load_path(file)
    except ConfigError as exc:
        raise _invalid(exc) from None

    async def work(client: EtcdClient) -> Plan:
        return plan_apply(await read_stored(client, prefix), config, prefix, prune=prune)

    try:
        return _run(etcd, work)
    except ConfigError as exc:
        raise _invalid(exc) from None


class Output(StrEnum):
    """What `get` prints: a table (wide: every column, nothing cut), or a config document for `apply -f`."""

    table = "table"
    wide = "wide"
    yaml = "yaml"
    json = "json"


FileOption = Annotated[Path, typer.Option("--file", "-f", help="config file or directory")]
PruneOption = Annotated[
    bool, typer.Option("--prune", help="also delete the objects under the prefix that the files do not hold")
]


def register(app: typer.Typer) -> None:
    @app.command()
    def apply(
        file: FileOption,
        etcd: Etcd = "127.0.0.1:2379",
        prefix: Prefix = DEFAULT_PREFIX,
        ca: CaFile = None,
        cert: CertFile = None,
        key: KeyFile = None,
        user: User = None,
        password: Password = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="check and show the changes; write nothing")] = False,
        prune: PruneOption = False,
        force: Annotated[bool, typer.Option(help="with --prune: even if it deletes every stored object")] = False,
    ) -> None:
        """Validate, then write every object of FILE to etcd in one guarded transaction (--prune: and delete
        the objects the files no longer hold)."""
        target = settings(etcd, ca, cert, key, user, password)
        plan = _plan(file, target, prefix, prune)
        for warning in plan.warnings:
            typer.echo(f"warning (not touched by this apply): {warning}", err=True)
        deletes = [change for change in plan.pending if change.action == "delete"]
        stored = sum(1 for stored_key in plan.stored.values if parse_key(prefix, stored_key.encode()) is not None)
        if deletes and len(deletes) == stored and not force:
            typer.echo(
                f"refused: --prune would delete every object under {normalize_prefix(prefix)} ({len(deletes)}), "
                f"as {file} holds none of them; check the file and --prefix, or add --force; nothing was written",
                err=True,
            )
            raise typer.Exit(EXIT_INVALID)
        unchanged = len(plan.changes) - len(plan.pending)
        if dry_run:
            for change in plan.pending:
                typer.echo(f"{change.action} {change.kind}/{change.name} (dry run)")
            typer.echo(f"{len(plan.pending)} would change, {unchanged} unchanged (dry run: nothing was written)")
            return

        async def work(client: EtcdClient) -> tuple[int, int]:
            return await execute(client, plan)

        try:
            revision, transactions = _run(target, work)
        except ConflictError as exc:
            typer.echo(f"conflict: {exc}; read again and retry", err=True)
            raise typer.Exit(EXIT_CONFLICT) from None
        except PartialApplyError as exc:
            for change in exc.written:
                typer.echo(f"{change.action}d {change.kind}/{change.name}")
            typer.echo(f"PARTLY APPLIED: {exc}", err=True)
            typer.echo("  the changes listed on stdout are in etcd; run the same apply again to finish", err=True)
            raise typer.Exit(EXIT_PARTIAL) from None
        for change in plan.pending:
            typer.echo(f"{change.action}d {change.kind}/{change.name}")
        batches = f", in {transactions} transactions" if transactions > 1 else ""
        if not plan.pending:
            typer.echo(f"no changes: {unchanged} unchanged (etcd revision {revision})")
        else:
            typer.echo(f"{len(plan.pending)} changed, {unchanged} unchanged (etcd revision {revision}{batches})")

    @app.command()
    def diff(
        file: FileOption,
        etcd: Etcd = "127.0.0.1:2379",
        prefix: Prefix = DEFAULT_PREFIX,
        ca: CaFile = None,
        cert: CertFile = None,
        key: KeyFile = None,
        user: User = None,
        password: Password = None,
        prune: PruneOption = False,
    ) -> None:
        """Show what `apply` would change: objects, and the Envoy resources they alter. Writes nothing."""
        from xgate.pipeline import compile_config

        plan = _plan(file, settings(etcd, ca, cert, key, user, password), prefix, prune)
        for change in plan.pending:
            old, new = redacted_data(change.kind, change.old), redacted_data(change.kind, change.new)
            before = yaml.safe_dump(old, sort_keys=True).splitlines() if change.old is not None else []
            if change.old is None and change.action != "create":  # stored, but not a valid object: its text
                before = _raw_text(change.kind, plan.stored.values[change.key][1]).splitlines()
            after = yaml.safe_dump(new, sort_keys=True).splitlines() if change.action != "delete" else []
            typer.echo(f"{change.action} {change.kind}/{change.name} ({change.key})")
            for line in difflib.unified_diff(before, after, "etcd", str(file), lineterm="", n=2):
                typer.echo(f"  {line}")
        old = compile_config(plan.stored.config(), lenient=True).resources.by_kind()
        new = compile_config(planned_config(plan), lenient=True).resources.by_kind()
        for kind in old:
            for name in sorted(set(old[kind]) | set(new[kind])):
                if name not in old[kind]:
                    typer.echo(f"envoy: + {kind} {name}")
                elif name not in new[kind]:
                    typer.echo(f"envoy: - {kind} {name}")
                elif old[kind][name].SerializeToString(deterministic=True) != new[kind][name].SerializeToString(
                    deterministic=True
                ):
                    typer.echo(f"envoy: ~ {kind} {name}")
        typer.echo(f"{len(plan.pending)} objects would change")
        if plan.pending:
            raise typer.Exit(EXIT_DIFFERENT)

    @app.command()
    def get(
        kind: Annotated[str, typer.Argument(help=f"all, or one of {', '.join(KEY_KINDS)}")] = "all",
        name: Annotated[str | None, typer.Argument()] = None,
        output: Annotated[Output, typer.Option("--output", "-o", help="table, wide, yaml or json")] = Output.table,
        etcd: Etcd = "127.0.0.1:2379",
        prefix: Prefix = DEFAULT_PREFIX,
        ca: CaFile = None,
        cert: CertFile = None,
        key: KeyFile = None,
        user: User = None,
        password: Password = None,
    ) -> None:
        """Print objects stored in etcd: all, all of KIND, or one. `-o yaml`/`-o json` print a config document
        that `apply -f` takes back unchanged. A stored value that is not a valid object is reported on stderr
        with its problem and its raw text; asked for by name, it exits 2."""
        from xgate.cli.render import config_document, table

        kinds = KEY_KINDS if kind == "all" and name is None else (_check_kind(kind),)
        stored = _run(settings(etcd, ca, cert, key, user, password), lambda client: read_stored(client, prefix))
        found = {
            (obj_kind, obj_name): obj
            for (obj_kind, obj_name), obj in sorted(stored.objects.items())
            if obj_kind in kinds and (name is None or obj_name == name)
        }
        exact = key_of(prefix, kinds[0], name).decode() if name is not None else None
        folders = tuple(f"{normalize_prefix(prefix)}{one}/" for one in kinds)
        invalid = _report_invalid(stored, lambda source: source == exact if exact else source.startswith(folders))
        if name is not None and not found:
            if not invalid:
                typer.echo(f"{kinds[0]}/{name} not found under {normalize_prefix(prefix)}", err=True)
            raise typer.Exit(EXIT_INVALID)
        if output in (Output.table, Output.wide):
            tables = [
                table(one, [(n, obj) for (k, n), obj in found.items() if k == one], output is Output.wide)
                for one in kinds
                if any(k == one for k, _ in found)
            ]
            typer.echo("\n".join(tables), nl=False)
            if not tables:
                typer.echo(f"no objects under {normalize_prefix(prefix)}", err=True)
            return
        data = {key: obj if key[0] == PLUGIN else redacted_data(key[0], object_data(obj)) for key, obj in found.items()}
        document = config_document(data)
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n" if output is Output.json else None
        typer.echo(text or yaml.safe_dump(document, sort_keys=False, allow_unicode=True), nl=False)

    @app.command()
    def delete(
        kind: Annotated[str, typer.Argument()],
        name: Annotated[str, typer.Argument()],
        force: Annotated[bool, typer.Option(help="delete even if routes refer to it")] = False,
        etcd: Etcd = "127.0.0.1:2379",
        prefix: Prefix = DEFAULT_PREFIX,
        ca: CaFile = None,
        cert: CertFile = None,
        key: KeyFile = None,
        user: User = None,
        password: Password = None,
    ) -> None:
        """Delete one object; an upstream or listener that routes still use is refused unless --force."""
        kind = _check_kind(kind)
        target = settings(etcd, ca, cert, key, user, password)

        async def work(client: EtcdClient) -> tuple[Stored, int | None, list[str]]:
            stored = await read_stored(client, prefix)
            users = references_to(stored, kind, name)
            if users and not force:
                return stored, None, users
            return stored, await delete_object(client, stored, prefix, kind, name), users

        try:
            _, revision, users = _run(target, work)
        except KeyError:
            typer.echo(f"{kind}/{name} does not exist under {prefix}", err=True)
            raise typer.Exit(EXIT_INVALID) from None
        except ConflictError as exc:
            typer.echo(f"conflict: {exc}", err=True)
            raise typer.Exit(EXIT_CONFLICT) from None
        if revision is None:
            typer.echo(f"refused: {kind}/{name} is used by {', '.join(users)} (use --force)", err=True)
            raise typer.Exit(EXIT_INVALID)
        typer.echo(f"deleted {kind}/{name} (etcd revision {revision})")
        if users:
            typer.echo(f"warning: {', '.join(users)} now refer to a missing {kind}", err=True)


def _check_kind(kind: str) -> str:
    """The kind as keys spell it; the plural is accepted too (`get routes`)."""
    singular = kind.removesuffix("s") if kind.removesuffix("s") in KEY_KINDS else kind
    if singular not in KEY_KINDS:
        raise typer.BadParameter(f"use one of {', '.join(KEY_KINDS)}", param_hint="KIND")
    return singular


RAW_SHOWN = 400  # characters of an invalid stored value that `get` prints


def _raw_text(kind: str, value: bytes) -> str:
    """A stored value's text as it may be shown; never a secret's (it may hold a private key)."""
    if kind == "secret":
        return f"(a secret's value, {len(value):,} bytes, is not shown)"
    return value.decode("utf-8", "replace")


def _report_invalid(stored: Stored, wanted: Callable[[str], bool]) -> bool:
    """On stderr, each problem of the stored values whose key is `wanted`, then (once) the value's start;
    whether there was any."""
    shown: set[str] = set()
    for issue in stored.issues:
        if not wanted(issue.source):
            continue
        typer.echo(str(issue), err=True)
        if issue.source not in shown:
            shown.add(issue.source)
            parsed = parse_key(stored.prefix, issue.source.encode())
            text = _raw_text(parsed[0] if parsed else "", stored.values[issue.source][1])
            more = f" ... ({len(text):,} characters)" if len(text) > RAW_SHOWN else ""
            typer.echo(f"  stored value: {text[:RAW_SHOWN]!r}{more}", err=True)
    return bool(shown)
