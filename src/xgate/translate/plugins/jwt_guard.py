"""The native path's JWT guard: a Lua filter before jwt_authn refusing what jwt_authn would let through.

jwt_authn ignores a token's `crit` and `b64` header members, takes an ECDSA signature with leading zero bytes
and any token that fits in the request's headers. The guard refuses those as the Python path does
(xgate.authz.jose.guard, the same rules in Python): a token longer than the provider's `max_token_bytes`, a
header with a `crit` member (RFC 7515 4.1.11: what is not understood must be refused) or a `b64` member other
than true (RFC 7797), an ES256/384/512 signature that is not 64/96/132 bytes. It looks at every token where
the provider looks, found as jwt_authn finds them (xgate.authz.extract does the same in Python), before any
is verified, and answers as jwt_authn does: 401 with `WWW-Authenticate: Bearer realm="<url>", error="invalid_token"`.

A header it cannot read is left to jwt_authn, which refuses it; its reader takes everything protobuf's JSON
reader takes, so no header jwt_authn accepts escapes it. Only routes that require a native provider run it
(a script per provider, named by the route); CORS preflights pass, as jwt_authn lets them.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.extensions.filters.http.lua.v3 import lua_pb2 as lua_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)

from xgate.plugins.jwt import Provider, header_locations
from xgate.translate.protos import pack

GUARD_FILTER = "xgate.jwt_guard"

_SCRIPT = r"""
local SPACE = "[ \t\n\v\f\r]"
local ECDSA = { ES256 = 64, ES384 = 96, ES512 = 132 }

local function encoded_length(text)
  local core = text:gsub(SPACE, ""):gsub("=+$", "")
  if #core % 4 == 1 then return nil end
  return math.floor(#core * 3 / 4)
end

local DIGITS = {}
do
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
  for i = 1, 64 do DIGITS[alphabet:byte(i)] = i - 1 end
end

-- absl::WebSafeBase64Unescape; nil where it fails.
local function b64url(text)
  text = text:gsub(SPACE, "")
  local core = text:gsub("=+$", "")
  local pads = #text - #core
  local rest = #core % 4
  if rest == 1 or (pads > 0 and pads ~= ({ [0] = 0, [2] = 2, [3] = 1 })[rest]) then return nil end
  local out, value, bits = {}, 0, 0
  for i = 1, #core do
    local digit = DIGITS[core:byte(i)]
    if digit == nil then return nil end
    value = value * 64 + digit
    bits = bits + 6
    if bits >= 8 then
      bits = bits - 8
      local byte = math.floor(value / 2 ^ bits)
      out[#out + 1] = string.char(byte)
      value = value - byte * 2 ^ bits
    end
  end
  return table.concat(out)
end

local ESCAPES = {
  ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", ["'"] = "'",
}

-- A quoted string at i (its quote included): its text (escapes decoded, a non-ASCII escape as one byte 0xff,
-- which no name compared with can hold) and the index after it; nil if it is not one.
local function quoted(text, i)
  local quote = text:sub(i, i)
  local parts = {}
  i = i + 1
  while i <= #text do
    local char = text:sub(i, i)
    if char == quote then return table.concat(parts), i + 1 end
    if char == "\\" then
      local escape = text:sub(i + 1, i + 1)
      if escape == "u" or escape == "U" then
        local code = tonumber(text:sub(i + 2, i + 5), 16)
        if code == nil then return nil end
        parts[#parts + 1] = code < 128 and string.char(code) or "\255"
        i = i + 6
      elseif ESCAPES[escape] then
        parts[#parts + 1] = ESCAPES[escape]
        i = i + 2
      else
        return nil
      end
    else
      parts[#parts + 1] = char
      i = i + 1
    end
  end
  return nil
end

local function skip_space(text, i)
  return text:find("[^ \t\n\r]", i) or #text + 1
end

-- Skips one value at i; returns the index after it, and the value's text when it is not a container.
local function skip_value(text, i)
  local char = text:sub(i, i)
  if char == '"' or char == "'" then
    local value, after = quoted(text, i)
    return after, value, true
  end
  if char == "{" or char == "[" then
    local depth = 0
    while i <= #text do
      char = text:sub(i, i)
      if char == '"' or char == "'" then
        local _, after = quoted(text, i)
        if after == nil then return nil end
        i = after
      else
        if char == "{" or char == "[" then depth = depth + 1 end
        if char == "}" or char == "]" then depth = depth - 1 end
        i = i + 1
        if depth == 0 then return i end
      end
    end
    return nil
  end
  local word = text:match("^[^,}%] \t\n\r]+", i)
  if word == nil then return nil end
  return i + #word, word, false
end

-- The header's top-level members: name -> {text, is_string}; nil when it cannot be read.
local function members(text)
  local found = {}
  local i = skip_space(text, 1)
  if text:sub(i, i) ~= "{" then return nil end
  i = skip_space(text, i + 1)
  if text:sub(i, i) == "}" then return found end
  while true do
    local name
    local char = text:sub(i, i)
    if char == '"' or char == "'" then
      name, i = quoted(text, i)
    else
      name = text:match("^[%w_]+", i)
      if name then i = i + #name end
    end
    if name == nil then return nil end
    i = skip_space(text, i)
    if text:sub(i, i) ~= ":" then return nil end
    i = skip_space(text, i + 1)
    local value, is_string
    i, value, is_string = skip_value(text, i)
    if i == nil then return nil end
    found[name] = { value, is_string }
    i = skip_space(text, i)
    char = text:sub(i, i)
    if char == "," then
      i = skip_space(text, i + 1)
      if text:sub(i, i) == "}" then return found end
    elseif char == "}" then
      return found
    else
      return nil
    end
  end
end

-- A token header's members, decoded and read once per header text this worker sees (false: unreadable).
-- Clients send a handful of distinct headers and decoding one in Lua costs more than the rest of the guard;
-- the memo holds short headers only and starts again when full, so what it holds stays small.
local READ, READ_COUNT = {}, 0
local function header_members(segment)
  local known = READ[segment]
  if known ~= nil then return known end
  local header = b64url(segment)
  local fields = header and members(header) or false
  if #segment <= 512 then
    if READ_COUNT >= 1024 then READ, READ_COUNT = {}, 0 end
    READ[segment], READ_COUNT = fields, READ_COUNT + 1
  end
  return fields
end

local function refusal(token)
  if #token > MAX_TOKEN_BYTES then return "Jwt is too large" end
  local first, second = token:find(".", 1, true), nil
  if first then second = token:find(".", first + 1, true) end
  if not second or token:find(".", second + 1, true) or first == 1 or second == first + 1 or second == #token then
    return nil
  end
  local fields = header_members(token:sub(1, first - 1))
  if not fields then return nil end
  if fields.crit then return "Jwt header has a crit parameter (extensions this verifier does not understand)" end
  if fields.b64 and not (fields.b64[1] == "true" and not fields.b64[2]) then
    return "Jwt header has b64 other than true (an unencoded payload, RFC 7797)"
  end
  local alg = fields.alg
  local expected = alg and alg[2] and ECDSA[alg[1]]
  if expected then
    local length = encoded_length(token:sub(second + 1))
    if length and length ~= expected then return "Jwt signature has the wrong length for its alg" end
  end
  return nil
end

local function unpercent(text)
  return (text:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

local function tokens(headers)
  local found = {}
  for _, location in ipairs(HEADERS) do
    local name, prefix = location[1], location[2]
    for index = 0, headers:getNumValues(name) - 1 do
      local value = headers:getAtIndex(name, index)
      if prefix == "" then
        found[#found + 1] = value
      else
        local at = value:find(prefix, 1, true)
        if at then
          local start = value:find("[%w_.%-]", at + #prefix)
          found[#found + 1] = start and value:sub(start) or value
        end
      end
    end
  end
  if #PARAMS > 0 then
    local query = (headers:get(":path") or ""):match("%?(.*)$")
    local params = {}
    for part in (query or ""):gmatch("[^&]+") do
      local key, value = part:match("^([^=]*)=?(.*)$")
      key = unpercent(key)
      if params[key] == nil then params[key] = unpercent(value) end
    end
    for _, name in ipairs(PARAMS) do
      if params[name] then found[#found + 1] = params[name] end
    end
  end
  if #COOKIES > 0 then
    local jar = {}
    for index = 0, headers:getNumValues("cookie") - 1 do
      for part in (headers:getAtIndex("cookie", index) .. ";"):gmatch("([^;]*);") do
        local key, value = part:gsub("^ +", ""):match("^([^=]*)=(.*)$")
        if key then
          if #value >= 2 and value:sub(1, 1) == '"' and value:sub(-1) == '"' then value = value:sub(2, -2) end
          if jar[key] == nil then jar[key] = value end
        end
      end
    end
    for _, name in ipairs(COOKIES) do
      if jar[name] then found[#found + 1] = jar[name] end
    end
  end
  return found
end

function envoy_on_request(handle)
  local headers = handle:headers()
  if headers:get(":method") == "OPTIONS" and (headers:get("origin") or "") ~= ""
      and (headers:get("access-control-request-method") or "") ~= "" then
    return
  end
  for _, token in ipairs(tokens(headers)) do
    local reason = refusal(token)
    if reason then
      local realm = (headers:get("x-forwarded-proto") or "http") .. "://" .. (headers:get(":authority") or "")
        .. (headers:get(":path") or ""):sub(1, 256)
      handle:respond({
        [":status"] = "401",
        ["www-authenticate"] = 'Bearer realm="' .. realm .. '", error="invalid_token"',
        ["content-type"] = "text/plain",
      }, reason)
      return
    end
  end
end
"""


def guard_filter(providers: tuple[Provider, ...]) -> list[hcm_v3.HttpFilter]:
    """The guard's filter for the native providers of a listener (none without any): one script each."""
    if not providers:
        return []
    config = lua_v3.Lua(
        stat_prefix="xgate_jwt_guard",
        source_codes={provider.name: _source(provider) for provider in providers},
    )
    return [hcm_v3.HttpFilter(name=GUARD_FILTER, typed_config=pack(config))]


def guard_route(provider: str) -> lua_v3.LuaPerRoute:
    """A route requiring the (native) provider of that name runs its script."""
    return lua_v3.LuaPerRoute(name=provider)


def _source(provider: Provider) -> base_v3.DataSource:
    settings = "\n".join(
        [
            f"local MAX_TOKEN_BYTES = {provider.max_token_bytes}",
            "local HEADERS = {"
            + ", ".join(
                f"{{ {lua_string(name)}, {lua_string(prefix)} }}" for name, prefix in header_locations(provider)
            )
            + "}",
            "local PARAMS = {" + ", ".join(lua_string(name) for name in sorted(set(provider.query))) + "}",
            "local COOKIES = {" + ", ".join(lua_string(name) for name in sorted(set(provider.cookies))) + "}",
        ]
    )
    return base_v3.DataSource(inline_string=f"-- xgate jwt guard, provider {provider.name}\n{settings}\n{_SCRIPT}")


def lua_string(text: str) -> str:
    """A Lua string literal: every byte that is not plain printable ASCII as a decimal escape."""
    return (
        '"'
        + "".join(
            char if " " <= char <= "~" and char not in '"\\' else "".join(f"\\{byte}" for byte in char.encode())
            for char in text
        )
        + '"'
    )
