"""envoy.service.auth.v3 Authorization: CheckRequest -> JWT check and/or the route's Python policy.

Envoy's ext_authz filter calls Check for routes with a Python policy or a jwt provider verified in Python. The
route's per-route ext_authz config carries `context_extensions`: "xgate_policy" (policy name), "xgate_jwt"
(provider name; "xgate_jwt_optional": "true" lets a request without a token pass), "xgate_route" (route name).
A token verified here is answered like jwt_authn would (401/403, see tokens.py) before any policy runs; its
claims go to the policy and `forward_claims` headers to the upstream. Without "xgate_jwt" the verified payload
comes from jwt_authn in `metadata_context` (the filter lists jwt_authn's namespace in
`metadata_context_namespaces`). Every call gets a CheckResponse: an unknown policy or provider and any internal
error deny (fail closed); a failing policy gets the runner's failure answer. Nothing raises to gRPC.

The server is grpcio's synchronous one: each Check runs in one of its threads, start to end. Measured with
bench/authz_service.py and auth.py, it answers 1.5-2x the checks per CPU-second that grpc.aio did (the
policy route's best rate through Envoy: ~2,100 rps against ~1,200), because grpc.aio's per-call work on the
event loop, and its hop to the policy pool and back, cost more than xgate's own check. What needs the event
loop (async policies, a JWKS refetch for an unknown kid) is handed to the loop `serve` ran on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2 as core_v3
from envoy.service.auth.v3 import attribute_context_pb2 as attribute_v3
from envoy.service.auth.v3 import external_auth_pb2 as auth_v3
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from envoy.type.v3 import http_status_pb2 as http_status_v3
from google.rpc import code_pb2, status_pb2

from xgate.authz.extract import header_pairs, realm
from xgate.authz.policy import Allow, Decision, Deny, PolicyRegistry, Request
from xgate.authz.runner import OUTCOMES, Outcome, PolicyRunner
from xgate.authz.tokens import JwtProviders, NeedsKeys, Refusal, claim_headers
from xgate.grpcguard import MalformedGuard
from xgate.listen import bind_grpc, grpc_options
from xgate.plugins.jwt import OPTIONAL_KEY, PAYLOAD_METADATA, PROVIDER_KEY, jwt_claims
from xgate.plugins.policy import HTTP_HEADER_PREFIX as _RESERVED
from xgate.plugins.policy import POLICY_KEY, ROUTE_KEY
from xgate.telemetry import server_interceptors

log = logging.getLogger("xgate.authz")

NO_POLICY = "(none)"  # metrics name for calls without an xgate_policy extension
INTERNAL = "(internal)"  # metrics name for errors of the service itself

_OVERWRITE = core_v3.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK_STATUS = status_pb2.Status(code=code_pb2.OK)
_DENIED_STATUS = status_pb2.Status(code=code_pb2.PERMISSION_DENIED)
# Threads of the gRPC server: each check holds one until answered, a hung plain policy until its timeout.
WORKERS = 32
RUNNING = 8  # of them running Python at once (see AuthorizationService)
# A check waits this long at most for a JWKS refetch on an unknown kid (aiohttp's fetch has its own timeout);
# past it the token is refused like one whose key is not there.
_REFETCH_WAIT = 10.0


class AuthorizationService(auth_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Answers Check with the policy named by the route. `metrics()`: {policy: {outcome: count}} over OUTCOMES.

    `failure_status`: the status of the failure answer; `fail_open`: a failing or timed-out policy allows
    instead (an unknown policy still denies: that is a wiring error, not a policy failure).
    """

    def __init__(
        self,
        registry: PolicyRegistry,
        *,
        timeout: float = 0.1,
        failure_status: int = 403,
        fail_open: bool = False,
        threads: int | None = None,
        providers: JwtProviders | None = None,
    ) -> None:
        self.registry = registry
        self.providers = providers or JwtProviders()
        self.closed_answer = Deny(failure_status)
        failure: Decision = Allow() if fail_open else self.closed_answer
        self.runner = PolicyRunner(timeout=timeout, failure=failure, threads=threads)
        self._counts: dict[str, Counter[str]] = {}
        self._counts_lock = threading.Lock()
        # Checks running Python at once. The server has more threads (a check waiting for a policy, or for the
        # loop, holds one), but more than a few running at once only trade the GIL back and forth: 8 threads
        # answered 2,100 calls per core-second, 32 answered 1,550 (bench/authz_service.py, inline policy).
        self._running = threading.BoundedSemaphore(RUNNING)
        # The loop that runs async policies and JWKS refetches for the server's threads (serve sets it).
        self.loop: asyncio.AbstractEventLoop | None = None

    def metrics(self) -> dict[str, dict[str, int]]:
        with self._counts_lock:
            return {name: {outcome: counts[outcome] for outcome in OUTCOMES} for name, counts in self._counts.items()}

    def close(self) -> None:
        self.runner.close()

    def Check(
        self, request: auth_v3.CheckRequest, context: grpc.ServicerContext | None = None
    ) -> auth_v3.CheckResponse:
        try:
            return self.check(request)
        except Exception:  # a bug of ours must not turn into a gRPC error at Envoy
            log.exception("authorization check failed; denying")
            self.count(INTERNAL, "errors")
            return response(self.closed_answer)

    def _wait(self, future: concurrent.futures.Future[Any], timeout: float) -> Any:
        """A check's wait for work elsewhere (the policy pool, the loop): it lets another check run meanwhile."""
        self._running.release()
        try:
            return future.result(timeout)
        finally:
            self._running.acquire()

    def check(self, request: auth_v3.CheckRequest) -> auth_v3.CheckResponse:
        """The answer to one Check, from any thread but the loop's (it may wait for the loop)."""
        with self._running:
            return self._check(request)

    def _check(self, request: auth_v3.CheckRequest) -> auth_v3.CheckResponse:
        attributes = request.attributes
        extensions = attributes.context_extensions
        name = extensions.get(POLICY_KEY, "")
        route = extensions.get(ROUTE_KEY, "")
        http = attributes.request.http
        headers = request_headers(http)
        forwarded: Mapping[str, str] = {}
        removed: list[str] = []
        if provider_name := extensions.get(PROVIDER_KEY, ""):
            outcome = self._verify(provider_name, route, extensions.get(OPTIONAL_KEY) == "true", http, headers)
            if isinstance(outcome, auth_v3.CheckResponse):
                return outcome
            claims, forwarded, removed = outcome
            verified = claims  # for the plugins after this filter (dyeing, rate limits) as jwt_authn's would be
            if not name:
                return response(Allow(), forwarded, removed, verified)
        else:
            claims, verified = jwt_claims(attributes.metadata_context), {}
        policy = self.registry.get(name)
        if policy is None:
            self.count(name or NO_POLICY, "errors")
            load_error = self.registry.errors.get(name)
            log.error(
                "route %s: %s; denying",
                route or "(unnamed)",
                f"policy {name} failed to load ({load_error})" if load_error
                else f"unknown policy {name!r}" if name
                else f"no {POLICY_KEY} in the route's ext_authz context_extensions",
            )  # fmt: skip
            return response(self.closed_answer)
        verdict = self.runner.run_blocking(
            policy,
            Request(
                method=http.method,
                path=http.path,
                headers=headers,
                source=attributes.source.address.socket_address.address,
                route=route,
            ),
            claims,
            self._loop(),
            self._wait,
        )
        self.count(name, verdict.outcome)
        if isinstance(verdict.decision, Allow):
            return response(verdict.decision, forwarded, removed, verified)
        return response(verdict.decision)

    def _verify(
        self,
        provider_name: str,
        route: str,
        optional: bool,
        http: attribute_v3.AttributeContext.HttpRequest,
        headers: Mapping[str, str],
    ) -> tuple[dict[str, Any], Mapping[str, str], list[str]] | auth_v3.CheckResponse:
        """(claims, claim headers to set, headers to remove) of a good token, or the answer refusing it."""
        verifier = self.providers.get(provider_name)
        counted = f"jwt:{provider_name}"
        if verifier is None:
            log.error("route %s: jwt provider %r is not loaded; denying", route or "(unnamed)", provider_name)
            self.count(counted, "errors")
            return response(self.closed_answer)
        preflight = _cors_preflight(http.method, headers)  # jwt_authn's bypass_cors_preflight: even with a token
        found = None if preflight else verifier.find(header_pairs(http), http.path)
        if found is None:
            if optional or preflight:
                _, removed = claim_headers(verifier.provider, {})
                return {}, {}, removed
            result: dict[str, Any] | Refusal = Refusal(401, "Jwt is missing", missing=True)
        elif isinstance(now := verifier.verify_now(found), NeedsKeys):
            # An unknown kid: the keys are fetched again on the loop, then the token verified again there.
            future = asyncio.run_coroutine_threadsafe(verifier.verify(found), self._loop())
            try:
                result = self._wait(future, _REFETCH_WAIT)
            except TimeoutError:
                future.cancel()
                result = Refusal(401, "Jwks doesn't have key to match kid or alg from Jwt")
        else:
            result = now
        if isinstance(result, Refusal):
            self.count(counted, "denied")
            body = result.description if not result.missing else "Jwt is missing"
            challenge = result.challenge(realm(http.scheme, http.host, http.path))
            return response(Deny(result.status, body, {"www-authenticate": challenge}))
        self.count(counted, "allowed")
        forwarded, removed = claim_headers(verifier.provider, result)
        if found is not None:
            removed.extend(found.headers)  # jwt_authn removes the tokens' headers before the upstream (forward: false)
        return result, forwarded, removed

    def count(self, name: str, outcome: Outcome) -> None:
        """One more `outcome` for `name` (a policy, "jwt:<provider>", or the internal errors)."""
        with self._counts_lock:
            counts = self._counts.get(name)
            if counts is None:
                counts = self._counts[name] = Counter()
            counts[outcome] += 1

    def _loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            raise RuntimeError("AuthorizationService.loop is not set (serve sets it)")
        return self.loop


def _cors_preflight(method: str, headers: Mapping[str, str]) -> bool:
    return method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers


def request_headers(http: attribute_v3.AttributeContext.HttpRequest) -> Mapping[str, str]:
    """The request's headers, lower-case names; Envoy's `header_map` form (encode_raw_headers) too. Headers
    named x-xgate-* are xgate's own (what Envoy fills in on the HTTP transport): not shown to a policy on either
    transport."""
    if http.headers:
        return MappingProxyType(
            {key.lower(): value for key, value in http.headers.items() if not key.lower().startswith(_RESERVED)}
        )
    joined: dict[str, str] = {}
    for header in http.header_map.headers:
        key = header.key.lower()
        if key.startswith(_RESERVED):
            continue
        value = header.value or header.raw_value.decode("utf-8", "replace")
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    return MappingProxyType(joined)


def _header_options(headers: Mapping[str, str]) -> list[core_v3.HeaderValueOption]:
    # OVERWRITE: the default (append) would let a client send its own x-xgate-user next to ours.
    return [
        core_v3.HeaderValueOption(header=core_v3.HeaderValue(key=key, value=value), append_action=_OVERWRITE)
        for key, value in headers.items()
    ]


def response(
    decision: Decision,
    claims: Mapping[str, str] | None = None,
    remove: list[str] | None = None,
    payload: Mapping[str, Any] | None = None,
) -> auth_v3.CheckResponse:
    """The CheckResponse for a decision: ok_response with headers to set (verified `claims` headers first, the
    policy's own win) and to remove, or denied_response. A token's `payload` verified here goes into Envoy's
    dynamic metadata as {"jwt_payload": payload}, which Envoy keeps in ext_authz's namespace: the second of
    PAYLOAD_NAMESPACES, where `jwt_claims`, dyeing and the rate-limit actions look after jwt_authn's."""
    if isinstance(decision, Allow):
        headers = {**claims, **decision.headers} if claims else decision.headers
        answer = auth_v3.CheckResponse(
            status=_OK_STATUS,
            ok_response=auth_v3.OkHttpResponse(
                headers=_header_options(headers),
                headers_to_remove=[name for name in remove or () if name not in headers],
            ),
        )
        if payload:
            answer.dynamic_metadata.update({PAYLOAD_METADATA: dict(payload)})
        return answer
    return auth_v3.CheckResponse(
        status=_DENIED_STATUS,
        denied_response=auth_v3.DeniedHttpResponse(
            status=http_status_v3.HttpStatus(code=decision.status),
            body=decision.body,
            headers=_header_options(decision.headers),
        ),
    )


@dataclass
class AuthzServer:
    """A running service: the gRPC server and the servicer (for metrics)."""

    grpc_server: grpc.Server
    service: AuthorizationService
    port: int

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving (running calls get `grace` seconds), shut the policy thread pool down and stop the
        providers' JWKS refreshes."""
        stopped = self.grpc_server.stop(grace)
        await asyncio.to_thread(stopped.wait)
        self.service.close()
        await self.service.providers.close()

    async def wait_for_termination(self) -> None:
        await asyncio.to_thread(self.grpc_server.wait_for_termination)


async def serve(
    registry: PolicyRegistry,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    failure_status: int = 403,
    fail_open: bool = False,
    timeout: float = 0.1,
    threads: int | None = None,
    providers: JwtProviders | None = None,
    workers: int = WORKERS,
    reuse_port: bool = False,
) -> tuple[AuthzServer, int]:
    """Start the Authorization service on `host:port` (0: any free port) answering from `registry` and
    `providers`.

    Returns the running server and the port it bound; stop with `await server.stop()`. `registry.load` and
    `providers.load` may be called at any time while serving. Errors: RuntimeError from grpc when the port
    cannot be bound, PortInUseError when another process holds it (unless `reuse_port`: several processes
    then share it). Checks run in `workers` threads of grpcio's synchronous server; async policies and JWKS
    refetches run on the calling event loop, which must keep running.
    """
    service = AuthorizationService(
        registry,
        timeout=timeout,
        failure_status=failure_status,
        fail_open=fail_open,
        threads=threads,
        providers=providers,
    )
    service.loop = asyncio.get_running_loop()
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xgate-authz"),
        interceptors=[MalformedGuard(), *server_interceptors()],
        options=grpc_options(reuse_port=reuse_port),
    )
    auth_grpc.add_AuthorizationServicer_to_server(service, server)
    bound = bind_grpc(server, host, port, "authz gRPC, --listen", reuse_port=reuse_port)
    server.start()
    return AuthzServer(server, service, bound), bound
