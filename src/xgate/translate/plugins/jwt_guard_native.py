"""The JWT guard without Lua per request, for the providers where Envoy's filters refuse exactly what it refuses.

The Lua guard (jwt_guard.py) costs every request a Lua call: about 8% of the bare route's throughput for an
empty script, 11% for the guard. For a provider whose keys and settings leave it three questions, Envoy answers
them natively in the usual form of a request, `Authorization: Bearer <token>`:
- the size: there the token is the value less the prefix. A matcher around the provider's Lua guard skips it
  for a request without the header and for the usual form with a value not longer than the limit plus the
  prefix (CEL `size`); any other request (a longer value, text before the prefix, spaces after it) runs the
  Lua guard, before jwt_authn as on any provider;
- `crit` and `b64` (RFC 7515, RFC 7797): jwt_authn puts the header it verified in its metadata
  (`header_in_metadata`: read by protobuf's JSON reader, the one the guards imitate), and an RBAC filter after it
  (DENY) refuses a header with `crit`, or with `b64` other than true;
- the ECDSA signature length does not arise: Envoy gets no EC key, so jwt_authn refuses every ES256/384/512 token.

That holds for a provider reading tokens from `Authorization: Bearer ` alone (Envoy joins a repeated
Authorization into one value: a request carries one token at most, the one whose header is in the metadata),
with keys in the config and no `audiences`: after jwt_authn the guard can only turn a 200 into its 401, while
before it its 401 came ahead of jwt_authn's 403 for a wrong audience. Other providers keep the Lua guard for every
request. A refusal is the guard's: the listener's local reply config maps the RBAC denial to 401 with the
reason and jwt_authn's challenge, `Bearer realm="<url>", error="invalid_token"`.
"""

from __future__ import annotations

from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2 as accesslog_v3
from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.core.v3 import extension_pb2 as extension_v3
from envoy.config.rbac.v3 import rbac_pb2 as rbac_v3
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2 as cel_filter_v3
from envoy.extensions.common.matching.v3 import extension_matcher_pb2 as extension_matcher_v3
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2 as skip_v3
from envoy.extensions.filters.http.lua.v3 import lua_pb2 as lua_v3
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_http_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.type.matcher.v3 import http_inputs_pb2 as http_inputs_v3
from envoy.type.matcher.v3 import metadata_pb2 as metadata_v3
from envoy.type.matcher.v3 import value_pb2 as value_v3
from google.api.expr.v1alpha1 import syntax_pb2 as cel_syntax
from google.protobuf import wrappers_pb2
from xds.core.v3 import extension_pb2 as xds_extension_v3
from xds.type.matcher.v3 import cel_pb2 as xds_cel_matcher_v3
from xds.type.matcher.v3 import http_inputs_pb2 as xds_http_inputs_v3
from xds.type.matcher.v3 import matcher_pb2 as xds_matcher_v3
from xds.type.matcher.v3 import regex_pb2 as xds_regex_v3
from xds.type.matcher.v3 import string_pb2 as xds_string_v3
from xds.type.v3 import cel_pb2 as xds_cel_v3

from xgate.plugins.jwks import stamped_jwks
from xgate.plugins.jwt import JWT_FILTER, Provider, header_locations
from xgate.translate.protos import pack

NATIVE_GUARD_FILTER = "xgate.jwt_guard.native"  # RBAC after jwt_authn
FORM_GUARD_FILTER = "xgate.jwt_guard.form"  # the Lua guard, for a token not in the usual form
HEADER_METADATA = "jwt_header"  # the verified header in jwt_authn's metadata
_HEADER, _PREFIX = "authorization", "Bearer "
# The usual form: the value starts with the prefix and the token right after it (a base64url character or dot).
_USUAL = _PREFIX + "[A-Za-z0-9_.-].*"
_DENIED = "rbac_access_denied_matched_policy[%s]"  # response code details of an RBAC DENY policy's denial
# The policies, named for the reason the Lua guard gives (the body of the answer).
_REASONS = {
    "xgate-jwt-crit": "Jwt header has a crit parameter (extensions this verifier does not understand)",
    "xgate-jwt-b64": "Jwt header has b64 other than true (an unencoded payload, RFC 7797)",
}
# jwt_authn's challenge (Http::Utility::buildOriginalUri: x-forwarded-proto, which Envoy sets, host, the path
# cut at 256 bytes), as the Lua guard writes it.
_CHALLENGE = 'Bearer realm="%REQ(x-forwarded-proto)%://%REQ(:authority)%%REQ(:path):256%", error="invalid_token"'
_OVERWRITE = base_v3.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
Predicate = xds_matcher_v3.Matcher.MatcherList.Predicate


def is_native(provider: Provider) -> bool:
    """Whether Envoy's filters alone guard `provider` for the usual form (see the module's docstring)."""
    keys = provider.key_set
    return (
        header_locations(provider) == ((_HEADER, _PREFIX),)
        and not provider.query
        and not provider.cookies
        and not provider.audiences
        and keys is not None
        and not any(key.get("kty") == "EC" for key in stamped_jwks(keys, provider.algorithms)["keys"])
    )


def before_jwt(providers: tuple[Provider, ...], sources: dict[str, base_v3.DataSource]) -> list[hcm_v3.HttpFilter]:
    """The Lua guard of the natively guarded `providers` (`sources`: a script each), skipped without an
    Authorization header and for `Bearer <token>` not longer than the smallest of their limits (a provider with
    a larger one gets the Lua guard for the tokens in between, which it then lets pass)."""
    if not providers:
        return []
    limit = min(provider.max_token_bytes for provider in providers) + len(_PREFIX)
    header = xds_extension_v3.TypedExtensionConfig(
        name="authorization", typed_config=pack(http_inputs_v3.HttpRequestHeaderMatchInput(header_name=_HEADER))
    )

    def matches(regex: str) -> xds_matcher_v3.Matcher.MatcherList.Predicate:
        value = xds_string_v3.StringMatcher(
            safe_regex=xds_regex_v3.RegexMatcher(regex=regex, google_re2=xds_regex_v3.RegexMatcher.GoogleRE2())
        )
        return Predicate(single_predicate=Predicate.SinglePredicate(input=header, value_match=value))

    short = Predicate(
        single_predicate=Predicate.SinglePredicate(
            input=xds_extension_v3.TypedExtensionConfig(
                name="request", typed_config=pack(xds_http_inputs_v3.HttpAttributesCelMatchInput())
            ),
            custom_match=xds_extension_v3.TypedExtensionConfig(
                name="size", typed_config=pack(xds_cel_matcher_v3.CelMatcher(expr_match=_not_longer(_HEADER, limit)))
            ),
        )
    )
    skip = xds_matcher_v3.Matcher.OnMatch(
        action=xds_extension_v3.TypedExtensionConfig(name="skip", typed_config=pack(skip_v3.SkipFilter()))
    )
    absent = Predicate(not_matcher=matches(".*"))
    usual = Predicate(and_matcher=Predicate.PredicateList(predicate=[matches(_USUAL), short]))
    matcher = xds_matcher_v3.Matcher(
        matcher_list=xds_matcher_v3.Matcher.MatcherList(
            matchers=[
                xds_matcher_v3.Matcher.MatcherList.FieldMatcher(predicate=absent, on_match=skip),
                xds_matcher_v3.Matcher.MatcherList.FieldMatcher(predicate=usual, on_match=skip),
            ]
        )
    )
    lua = lua_v3.Lua(stat_prefix="xgate_jwt_guard_form", source_codes=sources)
    wrapped = extension_matcher_v3.ExtensionWithMatcher(
        xds_matcher=matcher,
        extension_config=extension_v3.TypedExtensionConfig(name=FORM_GUARD_FILTER, typed_config=pack(lua)),
    )
    return [hcm_v3.HttpFilter(name=FORM_GUARD_FILTER, typed_config=pack(wrapped))]


def after_jwt(providers: tuple[Provider, ...], manager: hcm_v3.HttpConnectionManager) -> list[hcm_v3.HttpFilter]:
    """The RBAC filter after jwt_authn (off unless a route turns it on), and the listener's answer to its denials."""
    if not providers:
        return []
    for policy, reason in _REASONS.items():
        manager.local_reply_config.mappers.append(_refusal(policy, reason))
    return [hcm_v3.HttpFilter(name=NATIVE_GUARD_FILTER, typed_config=pack(rbac_http_v3.RBAC()), disabled=True)]


_ANY_PERMISSION = rbac_v3.Permission(any=True)


def _all(*principals: rbac_v3.Principal) -> rbac_v3.Principal:
    return rbac_v3.Principal(and_ids=rbac_v3.Principal.Set(ids=list(principals)))


def _header_member(name: str, **value: bool) -> rbac_v3.Principal:
    """A test of the member `name` of the header jwt_authn verified (none verified: no match)."""
    path = [metadata_v3.MetadataMatcher.PathSegment(key=key) for key in (HEADER_METADATA, name)]
    matcher = metadata_v3.MetadataMatcher(filter=JWT_FILTER, path=path, value=value_v3.ValueMatcher(**value))
    return rbac_v3.Principal(
        sourced_metadata=rbac_v3.SourcedMetadata(metadata_matcher=matcher, metadata_source=rbac_v3.DYNAMIC)
    )


def _route_guard() -> rbac_http_v3.RBACPerRoute:
    """DENY policies: a verified header with `crit`, or with `b64` other than true."""
    b64 = _header_member("b64", present_match=True)
    b64_true = _header_member("b64", bool_match=True)
    policies = {
        "xgate-jwt-crit": rbac_v3.Policy(
            permissions=[_ANY_PERMISSION], principals=[_header_member("crit", present_match=True)]
        ),
        "xgate-jwt-b64": rbac_v3.Policy(
            permissions=[_ANY_PERMISSION], principals=[_all(b64, rbac_v3.Principal(not_id=b64_true))]
        ),
    }
    rules = rbac_v3.RBAC(action=rbac_v3.RBAC.DENY, policies=policies)
    return rbac_http_v3.RBACPerRoute(rbac=rbac_http_v3.RBAC(rules=rules))


# The same for every natively guarded route (packed once: a config may have tens of thousands of routes).
ROUTE_GUARD = pack(_route_guard())


def _not_longer(header: str, limit: int) -> xds_cel_v3.CelExpression:
    """CEL: `size(request.headers[header]) <= limit` (its length in characters: a token is base64url and dots,
    ASCII, or the Lua guard refuses it anyway)."""
    nodes = iter(range(1, 100))

    def node(**fields: Any) -> cel_syntax.Expr:
        return cel_syntax.Expr(id=next(nodes), **fields)

    def call(function: str, *args: cel_syntax.Expr) -> cel_syntax.Expr:
        return node(call_expr=cel_syntax.Expr.Call(function=function, args=list(args)))

    request = node(ident_expr=cel_syntax.Expr.Ident(name="request"))
    headers = node(select_expr=cel_syntax.Expr.Select(operand=request, field="headers"))
    value = call("_[_]", headers, node(const_expr=cel_syntax.Constant(string_value=header)))
    expression = call("_<=_", call("size", value), node(const_expr=cel_syntax.Constant(int64_value=limit)))
    return xds_cel_v3.CelExpression(parsed_expr=cel_syntax.ParsedExpr(expr=expression))


def _is_denial(policy: str) -> str:
    return f"response.code_details == '{_DENIED % policy}'"


def _refusal(policy: str, reason: str) -> hcm_v3.ResponseMapper:
    """The listener's answer to a denial of `policy`: the guard's 401 with jwt_authn's challenge."""
    denied = accesslog_v3.AccessLogFilter(
        extension_filter=accesslog_v3.ExtensionFilter(
            name="envoy.access_loggers.extension_filters.cel",
            typed_config=pack(cel_filter_v3.ExpressionFilter(expression=_is_denial(policy))),
        )
    )
    forbidden = accesslog_v3.AccessLogFilter(
        status_code_filter=accesslog_v3.StatusCodeFilter(
            comparison=accesslog_v3.ComparisonFilter(
                op=accesslog_v3.ComparisonFilter.EQ,
                value=base_v3.RuntimeUInt32(default_value=403, runtime_key="xgate.jwt_guard.status"),
            )
        )
    )
    return hcm_v3.ResponseMapper(
        # The status first: a cheap test, so the CEL runs for RBAC's 403s only, not for every local reply.
        filter=accesslog_v3.AccessLogFilter(and_filter=accesslog_v3.AndFilter(filters=[forbidden, denied])),
        status_code=wrappers_pb2.UInt32Value(value=401),
        body=base_v3.DataSource(inline_string=reason),
        headers_to_add=[
            base_v3.HeaderValueOption(
                header=base_v3.HeaderValue(key="www-authenticate", value=_CHALLENGE), append_action=_OVERWRITE
            )
        ],
    )
