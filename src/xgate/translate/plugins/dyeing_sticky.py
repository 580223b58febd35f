"""Sticky dye rules in Envoy: a Lua filter computing each sticky rule's bucket as the dyeing service does.

The service's bucket is BLAKE2b (8-byte digest) of `seed NUL key`, read as a big-endian integer, modulo
plugins.dyeing.SCALE (xgate.dyeing.rules.sticky_bucket). Envoy's Lua is LuaJIT with its FFI, whose 64-bit
integers make the same BLAKE2b (RFC 7693) a few dozen lines, so a sticky rule needs no service: no gRPC call
per request, and no request passed on undyed because the service was late (at twice its capacity, 11-45% of
requests were: a sticky canary user flipped to stable). Both paths hash the same bytes, so a user keeps their
bucket whichever path serves them, and moving a config between the paths moves nobody.

For each sticky rule a request satisfies the filter sets dynamic metadata (plugins.dyeing STICKY_NAMESPACE,
STICKY_KEY % the rule's index) and clears the route cache; the rule's route entries match on that metadata
(dyeing_routes), after the entries of the rules before it, so first-match-wins holds. A key that is empty,
not UTF-8, or holds U+FFFD counts as absent on both paths (the service reads header bytes that are not UTF-8
as U+FFFD, so such keys could not hash alike).
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.extensions.filters.http.lua.v3 import lua_pb2 as lua_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)

from xgate.plugins.dyeing import SCALE, STICKY_KEY, STICKY_NAMESPACE, DyeingSettings
from xgate.plugins.jwt import PAYLOAD_METADATA, PAYLOAD_NAMESPACES
from xgate.translate.plugins.jwt_guard import lua_string
from xgate.translate.protos import pack

STICKY_FILTER = "xgate.dyeing_sticky"

_BLAKE2B = r"""
local ffi = require("ffi")
local bit = require("bit")
local bxor, ror = bit.bxor, bit.ror
local u64 = ffi.typeof("uint64_t")
local block_t = ffi.typeof("uint64_t[16]")
local IV = ffi.new("uint64_t[8]", {
  0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
  0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
})
local SIGMA = {
  [0] = { [0] = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 },
  { [0] = 14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3 },
  { [0] = 11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4 },
  { [0] = 7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8 },
  { [0] = 9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13 },
  { [0] = 2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9 },
  { [0] = 12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11 },
  { [0] = 13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10 },
  { [0] = 6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5 },
  { [0] = 10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0 },
}

local function mix(v, a, b, c, d, x, y)
  v[a] = v[a] + v[b] + x
  v[d] = ror(bxor(v[d], v[a]), 32)
  v[c] = v[c] + v[d]
  v[b] = ror(bxor(v[b], v[c]), 24)
  v[a] = v[a] + v[b] + y
  v[d] = ror(bxor(v[d], v[a]), 16)
  v[c] = v[c] + v[d]
  v[b] = ror(bxor(v[b], v[c]), 63)
end

local function compress(h, m, counter, last)
  local v = block_t()
  for i = 0, 7 do
    v[i] = h[i]
    v[i + 8] = IV[i]
  end
  v[12] = bxor(v[12], u64(counter))
  if last then v[14] = bit.bnot(v[14]) end
  for round = 0, 11 do
    local s = SIGMA[round % 10]
    mix(v, 0, 4, 8, 12, m[s[0]], m[s[1]])
    mix(v, 1, 5, 9, 13, m[s[2]], m[s[3]])
    mix(v, 2, 6, 10, 14, m[s[4]], m[s[5]])
    mix(v, 3, 7, 11, 15, m[s[6]], m[s[7]])
    mix(v, 0, 5, 10, 15, m[s[8]], m[s[9]])
    mix(v, 1, 6, 11, 12, m[s[10]], m[s[11]])
    mix(v, 2, 7, 8, 13, m[s[12]], m[s[13]])
    mix(v, 3, 4, 9, 14, m[s[14]], m[s[15]])
  end
  for i = 0, 7 do h[i] = bxor(h[i], v[i], v[i + 8]) end
end

-- BLAKE2b with an 8-byte digest, read big-endian (as the service's int.from_bytes(digest, "big")), mod SCALE.
local function bucket(message)
  local h = ffi.new("uint64_t[8]")
  for i = 0, 7 do h[i] = IV[i] end
  h[0] = bxor(h[0], 0x01010008ULL)
  local length = #message
  local offset = 0
  repeat
    local chunk = message:sub(offset + 1, offset + 128)
    local m = block_t()
    ffi.copy(m, chunk, #chunk)  -- little-endian words, zero padded: Envoy runs on little-endian machines
    offset = offset + #chunk
    compress(h, m, offset, offset >= length)
  until offset >= length
  return tonumber(bit.bswap(h[0]) % u64(SCALE))
end
"""

_RULES = r"""
local function valid_utf8(text)
  if not text:find("[\128-\255]") then return true end
  if text:find("\239\191\189", 1, true) then return false end
  local i, n = 1, #text
  while i <= n do
    local c = text:byte(i)
    local size, low, high = 1, 0x80, 0xBF
    if c < 0x80 then
      size = 1
    elseif c >= 0xC2 and c <= 0xDF then
      size = 2
    elseif c >= 0xE0 and c <= 0xEF then
      size = 3
      if c == 0xE0 then low = 0xA0 elseif c == 0xED then high = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      size = 4
      if c == 0xF0 then low = 0x90 elseif c == 0xF4 then high = 0x8F end
    else
      return false
    end
    for j = 1, size - 1 do
      local next = text:byte(i + j)
      if next == nil or next < (j == 1 and low or 0x80) or next > (j == 1 and high or 0xBF) then return false end
    end
    i = i + size
  end
  return true
end

-- A claim as the text a rule compares with (xgate.dyeing.rules._text): strings, integral numbers, booleans.
local function claim_text(value)
  local kind = type(value)
  if kind == "string" then return value end
  if kind == "boolean" then return value and "true" or "false" end
  if kind == "number" and value == math.floor(value) and value - value == 0 then
    if value == 0 then return "0" end
    return string.format("%.0f", value)
  end
  return nil
end

local function claims(handle)
  local metadata = handle:streamInfo():dynamicMetadata()
  for _, namespace in ipairs(PAYLOAD_NAMESPACES) do
    local found = metadata:get(namespace)
    local payload = found and found[PAYLOAD_METADATA]
    if type(payload) == "table" then return payload end
  end
  return {}
end

local function cookie(header, name)
  if header == nil then return nil end
  local first = true
  for part in (header .. ";"):gmatch("([^;]*);") do
    if not first then part = part:gsub("^%s+", "") end
    first = false
    local key, value = part:match("^([^=]*)=(.*)$")
    if key == name then return value end
  end
  return nil
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local payload
  local marked = false
  for _, rule in ipairs(RULES) do
    local key
    if rule.header then
      key = headers:get(rule.header)
    elseif rule.cookie then
      key = cookie(headers:get("cookie"), rule.cookie)
    else
      payload = payload or claims(handle)
      key = claim_text(payload[rule.claim])
    end
    if key and key ~= "" and valid_utf8(key) and bucket(rule.seed .. "\0" .. key) < rule.below then
      handle:streamInfo():dynamicMetadata():set(NAMESPACE, rule.metadata, true)
      marked = true
    end
  end
  if marked then handle:clearRouteCache() end
end
"""


def has_sticky(settings: DyeingSettings) -> bool:
    """Envoy computes the settings' sticky rules (they need no service otherwise)."""
    return not settings.uses_service and any(rule.sticky is not None for rule in settings.rules)


def sticky_filter(settings: DyeingSettings) -> list[hcm_v3.HttpFilter]:
    """The listener's sticky filter (none when it has no sticky rule Envoy computes)."""
    if not has_sticky(settings):
        return []
    source = base_v3.DataSource(inline_string=_source(settings))
    config = lua_v3.Lua(stat_prefix="xgate_dyeing_sticky", default_source_code=source)
    return [hcm_v3.HttpFilter(name=STICKY_FILTER, typed_config=pack(config))]


def sticky_off() -> lua_v3.LuaPerRoute:
    """A route with dyeing off runs no sticky rule."""
    return lua_v3.LuaPerRoute(disabled=True)


def _source(settings: DyeingSettings) -> str:
    rules = []
    for index, rule in enumerate(settings.rules):
        if rule.sticky is None:
            continue
        key = rule.sticky.key
        kind, name = next((kind, name) for kind in ("header", "cookie", "claim") if (name := getattr(key, kind)))
        rules.append(
            f"  {{ {kind} = {lua_string(name or '')}, seed = {lua_string(rule.sticky.seed or rule.stage)}, "
            f"below = {round(rule.sticky.percent * SCALE / 100)}, metadata = {lua_string(STICKY_KEY % index)} }},"
        )
    settings_lua = "\n".join(
        [
            f"local SCALE = {SCALE}",
            f"local NAMESPACE = {lua_string(STICKY_NAMESPACE)}",
            f"local PAYLOAD_METADATA = {lua_string(PAYLOAD_METADATA)}",
            "local PAYLOAD_NAMESPACES = {" + ", ".join(lua_string(name) for name in PAYLOAD_NAMESPACES) + "}",
            "local RULES = {",
            *rules,
            "}",
        ]
    )
    return f"-- xgate sticky dye rules\n{settings_lua}\n{_BLAKE2B}\n{_RULES}"
