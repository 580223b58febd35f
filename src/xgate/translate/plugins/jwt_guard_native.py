"""The JWT guard without Lua per request, for the providers where Envoy's filters refuse exactly what it refuses.

The Lua guard (jwt_guard.py) costs every request a Lua call: about 8% of the bare route's throughput for an
empty script, 11% for the guard. For a provider whose keys and settings leave it three questions, Envoy answers
them natively in the usual form of a request, `Authorization: Bearer <token>`:
- the size: there the token is the value less the prefix. A matcher around the provider's Lua guard skips it
  for a request without the header and for the usual form with a value not longer than the limit plus the
  prefix (CEL `size`); any other request (a longer value, text before the prefix, spaces after it) runs the
  Lua guard, before jwt_authn as on any provider;
- `crit` and `b64` (RFC 7515, RFC 7797): jwt_authn puts the header it verified in its metadata
  (`header_in_metadata`: read by protobuf's JSON reader, the one the guards imitate); after it a matcher on that
  metadata runs a small Lua script answering the refusal only for a header with `crit`, or with `b64` other
  than true (an RBAC filter doing the same cost 4-7% of the bare route's rps: it runs for every request);
- the ECDSA signature length does not arise: Envoy gets no EC key, so jwt_authn refuses every ES256/384/512 token.

That holds for a provider reading tokens from `Authorization: Bearer ` alone (Envoy joins a repeated
Authorization into one value: a request carries one token at most, the one whose header is in the metadata),
with keys in the config and no `audiences`: after jwt_authn the guard can only turn a 200 into its 401, while
before it its 401 came ahead of jwt_authn's 403 for a wrong audience. Other providers keep the Lua guard for every
request. A refusal is the guard's: 401 with the reason and jwt_authn's challenge, `Bearer realm="<url>",
error="invalid_token"`.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.core.v3 import extension_pb2 as extension_v3
from envoy.extensions.common.matching.v3 import extension_matcher_pb2 as extension_matcher_v3
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2 as skip_v3
from envoy.extensions.filters.http.lua.v3 import lua_pb2 as lua_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2 as network_inputs_v3
from envoy.extensions.matching.input_matchers.metadata.v3 import metadata_pb2 as metadata_input_v3
from envoy.type.matcher.v3 import http_inputs_pb2 as http_inputs_v3
from envoy.type.matcher.v3 import value_pb2 as value_v3
from google.api.expr.v1alpha1 import syntax_pb2 as cel_syntax
from xds.core.v3 import extension_pb2 as xds_extension_v3
from xds.type.matcher.v3 import cel_pb2 as xds_cel_matcher_v3
from xds.type.matcher.v3 import http_inputs_pb2 as xds_http_inputs_v3
from xds.type.matcher.v3 import matcher_pb2 as xds_matcher_v3
from xds.type.matcher.v3 import regex_pb2 as xds_regex_v3
from xds.type.matcher.v3 import string_pb2 as xds_string_v3
from xds.type.v3 import cel_pb2 as xds_cel_v3

from xgate.plugins.jwks import stamped_jwks
from xgate.plugins.jwt import JWT_FILTER, Provider, header_locations
from xgate.translate.plugins.jwt_guard import lua_string
from xgate.translate.protos import pack

NATIVE_GUARD_FILTER = "xgate.jwt_guard.native"  # after jwt_authn: refuses crit and b64
FORM_GUARD_FILTER = "xgate.jwt_guard.form"  # the Lua guard, for a token not in the usual form
HEADER_METADATA = "jwt_header"  # the verified header in jwt_authn's metadata
_HEADER, _PREFIX = "authorization", "Bearer "
# The usual form: the value starts with the prefix and the token right after it (a base64url character or dot).
_USUAL = _PREFIX + "[A-Za-z0-9_.-].*"
_CRIT = "Jwt header has a crit parameter (extensions this verifier does not understand)"
_B64 = "Jwt header has b64 other than true (an unencoded payload, RFC 7797)"
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
    # Off unless a route of such a provider turns it on: the matcher would cost every other route too.
    return [hcm_v3.HttpFilter(name=FORM_GUARD_FILTER, typed_config=pack(wrapped), disabled=True)]


def after_jwt(providers: tuple[Provider, ...]) -> list[hcm_v3.HttpFilter]:
    """After jwt_authn (off unless a route turns it on): a Lua script answering the guard's refusal, run only when
    the header jwt_authn verified has `crit`, or `b64` other than true (a matcher on jwt_authn's metadata; the
    script runs for nothing else)."""
    if not providers:
        return []
    refused = Predicate(
        or_matcher=Predicate.PredicateList(
            predicate=[
                _member("crit", present_match=True),
                Predicate(
                    and_matcher=Predicate.PredicateList(
                        predicate=[
                            _member("b64", present_match=True),
                            Predicate(not_matcher=_member("b64", bool_match=True)),
                        ]
                    )
                ),
            ]
        )
    )
    lua = lua_v3.Lua(
        stat_prefix="xgate_jwt_guard_native",
        source_codes={_SCRIPT_NAME: base_v3.DataSource(inline_string=_REFUSAL)},
    )
    return [
        hcm_v3.HttpFilter(
            name=NATIVE_GUARD_FILTER, typed_config=pack(_unless(Predicate(not_matcher=refused), lua)), disabled=True
        )
    ]


def _unless(skip_when: xds_matcher_v3.Matcher.MatcherList.Predicate, lua: lua_v3.Lua) -> Any:
    """`lua` wrapped in a matcher that skips it when `skip_when` holds."""
    skip = xds_matcher_v3.Matcher.OnMatch(
        action=xds_extension_v3.TypedExtensionConfig(name="skip", typed_config=pack(skip_v3.SkipFilter()))
    )
    matcher = xds_matcher_v3.Matcher(
        matcher_list=xds_matcher_v3.Matcher.MatcherList(
            matchers=[xds_matcher_v3.Matcher.MatcherList.FieldMatcher(predicate=skip_when, on_match=skip)]
        )
    )
    return extension_matcher_v3.ExtensionWithMatcher(
        xds_matcher=matcher,
        extension_config=extension_v3.TypedExtensionConfig(name=NATIVE_GUARD_FILTER, typed_config=pack(lua)),
    )


def _member(name: str, **value: bool) -> xds_matcher_v3.Matcher.MatcherList.Predicate:
    """A test of the member `name` of the header jwt_authn verified (none verified: no match)."""
    path = [network_inputs_v3.DynamicMetadataInput.PathSegment(key=key) for key in (HEADER_METADATA, name)]
    metadata = network_inputs_v3.DynamicMetadataInput(filter=JWT_FILTER, path=path)
    return Predicate(
        single_predicate=Predicate.SinglePredicate(
            input=xds_extension_v3.TypedExtensionConfig(name="jwt_header", typed_config=pack(metadata)),
            custom_match=xds_extension_v3.TypedExtensionConfig(
                name="member", typed_config=pack(metadata_input_v3.Metadata(value=value_v3.ValueMatcher(**value)))
            ),
        )
    )


_SCRIPT_NAME = "refusal"
# The guard's answer (as jwt_guard.py's script gives it). A member that is null is not in the table Envoy makes
# of the metadata: with `crit: null` or `b64: null` alone the reason names both.
_REFUSAL = f"""
local CRIT = {lua_string(_CRIT)}
local B64 = {lua_string(_B64)}
function envoy_on_request(handle)
  local verified = handle:streamInfo():dynamicMetadata():get({lua_string(JWT_FILTER)}) or {{}}
  local header = verified[{lua_string(HEADER_METADATA)}] or {{}}
  local reason = CRIT .. "; or " .. B64
  if header.crit ~= nil then
    reason = CRIT
  elseif header.b64 ~= nil and header.b64 ~= true then
    reason = B64
  end
  local headers = handle:headers()
  local realm = (headers:get("x-forwarded-proto") or "http") .. "://" .. (headers:get(":authority") or "")
    .. (headers:get(":path") or ""):sub(1, 256)
  handle:respond({{
    [":status"] = "401",
    ["www-authenticate"] = 'Bearer realm="' .. realm .. '", error="invalid_token"',
    ["content-type"] = "text/plain",
  }}, reason)
end
"""
# The same for every natively guarded route (packed once: a config may have tens of thousands of routes).
ROUTE_GUARD = pack(lua_v3.LuaPerRoute(name=_SCRIPT_NAME))


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
