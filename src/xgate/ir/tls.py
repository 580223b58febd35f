"""TLS references checked across objects: listeners' and upstreams' secrets exist and hold what they are used for."""

from __future__ import annotations

from collections.abc import Mapping

from xgate.config.load import ConfigSet
from xgate.config.schema import Listener, Upstream
from xgate.config.tls import Secret
from xgate.errors import ConfigIssue


def _needs(
    config: ConfigSet,
    kind: str,
    name: str,
    where: str,
    ref: str,
    part: str,
    secrets: Mapping[str, Secret],
) -> list[ConfigIssue]:
    """An issue when secret `ref` is missing or lacks `part` ("cert", "ca" or "ticket_keys")."""
    secret = secrets.get(ref)
    if secret is None:
        if ("secret", ref) in config.broken:
            return [config.issue(kind, name, where, f"secret {ref!r} is invalid (see its own issues)")]
        return [config.issue(kind, name, where, f"secret {ref!r} does not exist")]
    # A part named as a file counts: it is read when the config is loaded (config.secrets); what reaches
    # translation unread is an etcd value, which layout.decode refuses.
    held = {
        "cert": secret.cert or secret.cert_file,
        "ca": secret.ca or secret.ca_file,
        "ticket_keys": secret.ticket_keys or None,
    }[part]
    if held is None:
        what = {"cert": "certificate and key", "ca": "CA bundle (ca)", "ticket_keys": "ticket_keys"}[part]
        return [config.issue(kind, name, where, f"secret {ref!r} holds no {what}")]
    return []


def listener_tls_issues(config: ConfigSet, listener: Listener, secrets: Mapping[str, Secret]) -> list[ConfigIssue]:
    tls = listener.tls
    if tls is None:
        return []
    found: list[ConfigIssue] = []
    for index, cert in enumerate(tls.certificates):
        where = f"tls.certificates.{index}.secret"
        found += _needs(config, "listener", listener.name, where, cert.secret, "cert", secrets)
    if tls.client_certificates is not None:
        ca = tls.client_certificates.ca
        found += _needs(config, "listener", listener.name, "tls.client_certificates.ca", ca, "ca", secrets)
    if tls.session_ticket_keys is not None:
        keys = tls.session_ticket_keys
        found += _needs(config, "listener", listener.name, "tls.session_ticket_keys", keys, "ticket_keys", secrets)
    if tls.http_redirect_port is not None and tls.http_redirect_port == listener.port:
        message = "is the listener's own port: choose another port for plain HTTP"
        found.append(config.issue("listener", listener.name, "tls.http_redirect_port", message))
    return found


def upstream_tls_issues(config: ConfigSet, upstream: Upstream, secrets: Mapping[str, Secret]) -> list[ConfigIssue]:
    tls = upstream.tls
    if tls is None:
        return []
    found: list[ConfigIssue] = []
    if tls.ca is not None:
        found += _needs(config, "upstream", upstream.name, "tls.ca", tls.ca, "ca", secrets)
    if tls.certificate is not None:
        found += _needs(config, "upstream", upstream.name, "tls.certificate", tls.certificate, "cert", secrets)
    if tls.verify and not tls.san and upstream_sni(upstream) is None:
        message = "name the server its certificate must be for: set sni or san (the endpoints are IP addresses)"
        found.append(config.issue("upstream", upstream.name, "tls", message))
    return found


def upstream_sni(upstream: Upstream) -> str | None:
    """The SNI name sent to an upstream: `tls.sni`, else its first endpoint's host when that is a name."""
    if upstream.tls is not None and upstream.tls.sni is not None:
        return upstream.tls.sni
    first = upstream.endpoints[0]
    return None if first.is_ip else first.host


def used_secrets(listeners: list[Listener], upstreams: tuple[Upstream, ...], config: ConfigSet) -> dict[str, Secret]:
    """The secrets the served listeners and upstreams name (only those go to Envoy: it asks for them by name)."""
    by_name = {secret.name: secret for secret in config.secrets}
    names = {name for listener in listeners if listener.tls for name in listener.tls.secrets}
    names |= {name for upstream in upstreams if upstream.tls for name in upstream.tls.secrets}
    return {name: by_name[name] for name in sorted(names) if name in by_name}


def listener_ports(listener: Listener) -> list[tuple[int, str]]:
    """The ports a listener binds, with what each is for: its own, and its plain-HTTP redirect port."""
    ports = [(listener.port, "port")]
    if listener.tls is not None and listener.tls.http_redirect_port is not None:
        ports.append((listener.tls.http_redirect_port, "tls.http_redirect_port"))
    return ports
