"""TLS -> Envoy: SDS secrets, a TLS listener's filter chains (one per SNI certificate), its plain-HTTP redirect
listener, and an upstream cluster's TLS transport socket.

Listeners and clusters only name their secrets (SdsSecretConfig over ADS); the key material travels in the
Secret resources, so a rotated certificate is an SDS update: Envoy uses it for new handshakes, keeps every open
connection, and never rebuilds the listener.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.listener.v3 import listener_components_pb2 as listener_components_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.extensions.filters.http.router.v3 import router_pb2 as router_v3
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2 as tls_inspector_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_v3
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2 as secret_v3
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2 as tls_v3
from envoy.type.matcher.v3 import string_pb2 as string_v3
from google.protobuf import wrappers_pb2

from xgate.config.schema import Listener, Upstream
from xgate.config.tls import ListenerTls, Secret, split_san
from xgate.ir.model import GatewayIR
from xgate.ir.tls import upstream_sni
from xgate.translate import names
from xgate.translate.protos import ads_source, pack, socket_address

TLS_SOCKET = "envoy.transport_sockets.tls"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
_VERSIONS = {"1.2": tls_common_v3.TlsParameters.TLSv1_2, "1.3": tls_common_v3.TlsParameters.TLSv1_3}
_SAN_TYPES = {
    "dns": tls_common_v3.SubjectAltNameMatcher.DNS,
    "uri": tls_common_v3.SubjectAltNameMatcher.URI,
    "email": tls_common_v3.SubjectAltNameMatcher.EMAIL,
    "ip": tls_common_v3.SubjectAltNameMatcher.IP_ADDRESS,
}


def _sds(name: str) -> secret_v3.SdsSecretConfig:
    return secret_v3.SdsSecretConfig(name=name, sds_config=ads_source())


def _inline(text: str) -> base_v3.DataSource:
    return base_v3.DataSource(inline_bytes=text.encode())


# -- secrets -------------------------------------------------------------------------------------------------


def translate_secrets(ir: GatewayIR) -> dict[str, secret_v3.Secret]:
    """The SDS secrets the served listeners and upstreams name, each holding the one part it is named for."""
    out: dict[str, secret_v3.Secret] = {}
    for listener in (item.listener for item in ir.listeners):
        tls = listener.tls
        if tls is None:
            continue
        for cert in tls.certificates:
            _certificate(ir.secrets, cert.secret, out)
        if tls.client_certificates is not None:
            _ca(ir.secrets, tls.client_certificates.ca, out)
        if tls.session_ticket_keys is not None and (secret := ir.secrets.get(tls.session_ticket_keys)):
            keys = [base_v3.DataSource(inline_bytes=base64.b64decode(k.get_secret_value())) for k in secret.ticket_keys]
            name = names.tickets_secret(secret.name)
            out[name] = secret_v3.Secret(name=name, session_ticket_keys=tls_common_v3.TlsSessionTicketKeys(keys=keys))
    for upstream in ir.upstreams:
        if upstream.tls is not None:
            if upstream.tls.ca is not None:
                _ca(ir.secrets, upstream.tls.ca, out)
            if upstream.tls.certificate is not None:
                _certificate(ir.secrets, upstream.tls.certificate, out)
    return out


def _certificate(secrets: Mapping[str, Secret], ref: str, out: dict[str, secret_v3.Secret]) -> None:
    secret = secrets.get(ref)
    if secret is None or secret.cert is None or secret.key is None:
        return
    name = names.secret(ref)
    certificate = tls_common_v3.TlsCertificate(
        certificate_chain=_inline(secret.cert), private_key=_inline(secret.key.get_secret_value())
    )
    out[name] = secret_v3.Secret(name=name, tls_certificate=certificate)


def _ca(secrets: Mapping[str, Secret], ref: str, out: dict[str, secret_v3.Secret]) -> None:
    secret = secrets.get(ref)
    if secret is None or secret.ca is None:
        return
    name = names.ca_secret(ref)
    context = tls_common_v3.CertificateValidationContext(trusted_ca=_inline(secret.ca))
    out[name] = secret_v3.Secret(name=name, validation_context=context)


def _san_matchers(entries: tuple[str, ...]) -> list[tls_common_v3.SubjectAltNameMatcher]:
    matchers = []
    for entry in entries:
        kind, value = split_san(entry)
        matchers.append(
            tls_common_v3.SubjectAltNameMatcher(san_type=_SAN_TYPES[kind], matcher=string_v3.StringMatcher(exact=value))
        )
    return matchers


def _validation(ca: str, san: tuple[str, ...]) -> tls_v3.CommonTlsContext.CombinedCertificateValidationContext:
    """The CA bundle by SDS (it rotates with its secret), the accepted names in the listener or cluster."""
    return tls_v3.CommonTlsContext.CombinedCertificateValidationContext(
        default_validation_context=tls_common_v3.CertificateValidationContext(
            match_typed_subject_alt_names=_san_matchers(san)
        ),
        validation_context_sds_secret_config=_sds(names.ca_secret(ca)),
    )


# -- listeners -----------------------------------------------------------------------------------------------


def tls_filter_chains(
    tls: ListenerTls, manager: hcm_v3.HttpConnectionManager
) -> list[listener_components_v3.FilterChain]:
    """One filter chain per certificate, chosen by SNI (Envoy prefers an exact name over a wildcard), each with
    the same connection manager; a certificate without hosts is the chain for every other client."""
    if tls.client_certificates is not None:
        # The client's identity, verified by Envoy, replaces any x-forwarded-client-cert the client sent.
        manager.forward_client_cert_details = hcm_v3.HttpConnectionManager.SANITIZE_SET
        manager.set_current_client_cert_details.CopyFrom(
            hcm_v3.HttpConnectionManager.SetCurrentClientCertDetails(
                subject=wrappers_pb2.BoolValue(value=True), uri=True, dns=True
            )
        )
    packed_manager = pack(manager)
    chains = []
    for cert in sorted(tls.certificates, key=lambda item: not item.hosts):
        socket = base_v3.TransportSocket(name=TLS_SOCKET, typed_config=pack(_downstream_context(tls, cert.secret)))
        chains.append(
            listener_components_v3.FilterChain(
                name=",".join(cert.hosts) or "default",
                filter_chain_match=listener_components_v3.FilterChainMatch(server_names=list(cert.hosts)),
                filters=[listener_components_v3.Filter(name=HCM, typed_config=packed_manager)],
                transport_socket=socket,
            )
        )
    return chains


HCM = "envoy.filters.network.http_connection_manager"


def _downstream_context(tls: ListenerTls, secret: str) -> tls_v3.DownstreamTlsContext:
    common = tls_v3.CommonTlsContext(
        tls_params=tls_common_v3.TlsParameters(
            tls_minimum_protocol_version=_VERSIONS[tls.min_version],
            tls_maximum_protocol_version=_VERSIONS[tls.max_version],
            cipher_suites=list(tls.ciphers),
        ),
        alpn_protocols=list(tls.alpn),
        tls_certificate_sds_secret_configs=[_sds(names.secret(secret))],
    )
    if tls.client_certificates is not None:
        common.combined_validation_context.CopyFrom(
            _validation(tls.client_certificates.ca, tls.client_certificates.san)
        )
    context = tls_v3.DownstreamTlsContext(common_tls_context=common)  # a copy: `common` is complete by now
    client = tls.client_certificates
    if client is not None:
        context.require_client_certificate.value = client.required
    if not tls.session_resumption:
        context.disable_stateless_session_resumption = True
        context.disable_stateful_session_resumption = True
    elif tls.session_ticket_keys is not None:
        context.session_ticket_keys_sds_secret_config.CopyFrom(_sds(names.tickets_secret(tls.session_ticket_keys)))
    return context


def tls_inspector() -> listener_components_v3.ListenerFilter:
    """Reads the SNI name and ALPN of a ClientHello, so the filter chain can be chosen by them."""
    return listener_components_v3.ListenerFilter(name=TLS_INSPECTOR, typed_config=pack(tls_inspector_v3.TlsInspector()))


def redirect_listener(listener: Listener) -> listener_v3.Listener | None:
    """The plain-HTTP listener on `tls.http_redirect_port` that answers every request with a 301 to the same
    host and path over HTTPS on the listener's port. Its one route never changes, so it is inline."""
    tls = listener.tls
    if tls is None or tls.http_redirect_port is None:
        return None
    redirect = route_components_v3.RedirectAction(
        https_redirect=True,
        port_redirect=listener.port,
        response_code=route_components_v3.RedirectAction.MOVED_PERMANENTLY,
    )
    routes = route_v3.RouteConfiguration(
        name=names.redirect_listener(listener.name),
        virtual_hosts=[
            route_components_v3.VirtualHost(
                name="https-redirect",
                domains=["*"],
                routes=[route_components_v3.Route(match=route_components_v3.RouteMatch(prefix="/"), redirect=redirect)],
            )
        ],
    )
    manager = hcm_v3.HttpConnectionManager(
        stat_prefix=f"{listener.name}-http",
        codec_type=hcm_v3.HttpConnectionManager.AUTO,
        route_config=routes,
        http_filters=[hcm_v3.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_v3.Router()))],
    )
    return listener_v3.Listener(
        name=names.redirect_listener(listener.name),
        address=socket_address(listener.address, tls.http_redirect_port),
        filter_chains=[
            listener_components_v3.FilterChain(
                filters=[listener_components_v3.Filter(name=HCM, typed_config=pack(manager))]
            )
        ],
    )


# -- upstreams -----------------------------------------------------------------------------------------------


def upstream_transport_socket(upstream: Upstream) -> base_v3.TransportSocket | None:
    """TLS to the upstream's endpoints: SNI, the server's certificate checked against the CA and names, a
    client certificate, ALPN (h2 for `protocol: http2`, h2 and http/1.1 for `alpn: true`)."""
    tls = upstream.tls
    if tls is None:
        return None
    sni = upstream_sni(upstream)
    alpn = ["h2", "http/1.1"] if tls.alpn else ["h2"] if upstream.protocol == "http2" else ["http/1.1"]
    common = tls_v3.CommonTlsContext(alpn_protocols=alpn)
    if tls.certificate is not None:
        common.tls_certificate_sds_secret_configs.append(_sds(names.secret(tls.certificate)))
    if tls.verify and tls.ca is not None:
        common.combined_validation_context.CopyFrom(_validation(tls.ca, tls.san or ((sni,) if sni else ())))
    context = tls_v3.UpstreamTlsContext(common_tls_context=common, sni=sni or "")
    return base_v3.TransportSocket(name=TLS_SOCKET, typed_config=pack(context))
