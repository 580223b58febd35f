"""A compact JWS read the way Envoy's jwt_authn reads it, so the Python path takes and refuses the same tokens.

Envoy parses tokens with jwt_verify_lib over absl's base64 and protobuf's JSON reader in its legacy mode;
both are more lenient than Python's own modules in places, and stricter in others (tests/integration/
test_jwt_agreement.py holds the two paths to the same answers). What Envoy does, measured on 1.40:
- base64url: whitespace is skipped, `=` padding is optional but must be right when present, unused bits of
  the last character are ignored;
- JSON: objects and arrays may end with a comma, strings may be single-quoted (with the escapes \\' and
  \\U), object keys may be bare words, strings may hold raw control characters; duplicate keys (at any
  depth), NaN, Infinity, numbers that are not finite doubles, leading zeros, a BOM, text after the value,
  more than 100 levels of nesting and any text that is not UTF-8 are refused; every number is a double;
- registered claims: iss, sub and jti strings, iat, nbf and exp numbers in [0, 2^64) (a fraction is cut
  off), aud a string or a list of strings; alg a string Envoy implements, kid a string ("" counts as none).
The messages are jwt_verify_lib's, so both paths explain a refusal in the same words.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

ALGORITHMS = frozenset(
    ("ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
     "EdDSA")
)  # fmt: skip
# An ECDSA signature is r || s, each as long as the curve's order (RFC 7518 3.4); Envoy would also take them
# with leading zero bytes, which the xgate guard refuses on both paths (see guard).
ECDSA_SIGNATURE_BYTES = {"ES256": 64, "ES384": 96, "ES512": 132}
MAX_DEPTH = 100
_URLSAFE = re.compile(r"[A-Za-z0-9_-]*")
_SPACE = str.maketrans("", "", " \t\n\v\f\r")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_BARE_WORD = re.compile(r"[A-Za-z0-9_]+")
# A string's text up to its closing quote or a backslash, in one match: linear in the string's length.
_RUNS = {quote: re.compile(f"[^{quote}\\\\]*") for quote in "\"'"}
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "'": "'"}
_UINT64 = 2.0**64


class JsonError(ValueError):
    """Text Envoy's JSON reader would refuse."""


def b64url_decode(text: str) -> bytes | None:
    """absl::WebSafeBase64Unescape: None where it fails."""
    text = text.translate(_SPACE)
    core = text.rstrip("=")
    pads = len(text) - len(core)
    if _URLSAFE.fullmatch(core) is None or len(core) % 4 == 1:
        return None
    if pads and pads != (0, None, 2, 1)[len(core) % 4]:
        return None
    return base64.urlsafe_b64decode(core + "=" * (-len(core) % 4))


def b64url_length(text: str) -> int | None:
    """How many bytes `text` decodes to, without decoding it (None: it does not decode)."""
    core = text.translate(_SPACE).rstrip("=")
    if len(core) % 4 == 1:
        return None
    return len(core) * 3 // 4


def loads(data: bytes) -> Any:
    """JSON as Envoy reads it (see the module docstring); numbers come back as float. Raises JsonError."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonError("not UTF-8") from exc
    reader = _Reader(text)
    value = reader.value(0)
    reader.skip_space()
    if reader.at < len(text):
        raise JsonError(f"unexpected text at {reader.at}")
    return value


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def skip_space(self) -> None:
        text, at = self.text, self.at
        while at < len(text) and text[at] in " \t\n\r":
            at += 1
        self.at = at

    def peek(self) -> str:
        self.skip_space()
        if self.at >= len(self.text):
            raise JsonError("unexpected end")
        return self.text[self.at]

    def value(self, depth: int) -> Any:
        char = self.peek()
        if char == "{":
            return self.members(depth + 1)
        if char == "[":
            return self.items(depth + 1)
        if char in "\"'":
            return self.string()
        if char in "-0123456789":
            return self.number()
        for word, literal in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, self.at):
                self.at += len(word)
                return literal
        raise JsonError(f"unexpected character {char!r}")

    def members(self, depth: int) -> dict[str, Any]:
        if depth > MAX_DEPTH:
            raise JsonError("nested too deeply")
        self.at += 1
        found: dict[str, Any] = {}
        if self.peek() == "}":
            self.at += 1
            return found
        while True:
            key = self.string() if self.peek() in "\"'" else self.bare_word()
            if key in found:
                raise JsonError(f"duplicate key {key!r}")
            self.expect(":")
            found[key] = self.value(depth)
            if self.after_item("}"):
                return found

    def items(self, depth: int) -> list[Any]:
        if depth > MAX_DEPTH:
            raise JsonError("nested too deeply")
        self.at += 1
        found: list[Any] = []
        if self.peek() == "]":
            self.at += 1
            return found
        while True:
            found.append(self.value(depth))
            if self.after_item("]"):
                return found

    def after_item(self, close: str) -> bool:
        """After a member or an item: True at the end of the container (a comma before `close` is allowed)."""
        char = self.peek()
        if char == ",":
            self.at += 1
            if self.peek() == close:
                self.at += 1
                return True
            return False
        if char == close:
            self.at += 1
            return True
        raise JsonError(f"expected ',' or {close!r}")

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise JsonError(f"expected {char!r}")
        self.at += 1

    def bare_word(self) -> str:
        found = _BARE_WORD.match(self.text, self.at)
        word = found.group() if found is not None else ""
        if not word or word[0].isdigit() or word in ("null", "true", "false"):
            raise JsonError("expected a key")
        self.at += len(word)
        return word

    def number(self) -> float:
        found = _NUMBER.match(self.text, self.at)
        if found is None:
            raise JsonError("expected a number")
        self.at = found.end()
        if self.at < len(self.text) and self.peek() not in ",]}":
            raise JsonError("unexpected text after a number")
        number = float(found.group())
        if number in (float("inf"), float("-inf")):
            raise JsonError("number out of range")
        return number

    def string(self) -> str:
        text, quote = self.text, self.text[self.at]
        run = _RUNS[quote]
        self.at += 1
        parts: list[str] = []
        while True:
            end = run.match(text, self.at).end()  # type: ignore[union-attr]  # [^...]* always matches
            parts.append(text[self.at : end])
            if end >= len(text):
                raise JsonError("unterminated string")
            self.at = end + 1
            if text[end] == quote:
                return "".join(parts)
            parts.append(self.escape())

    def escape(self) -> str:
        if self.at >= len(self.text):
            raise JsonError("unterminated string")
        char = self.text[self.at]
        self.at += 1
        if char in "uU":
            rune = self.hex4()
            if 0xDC00 <= rune <= 0xDFFF:
                raise JsonError("unpaired low surrogate")
            if 0xD800 <= rune <= 0xDBFF:
                if not self.text.startswith("\\u", self.at):
                    raise JsonError("unpaired high surrogate")
                self.at += 2
                low = self.hex4()
                if not 0xDC00 <= low <= 0xDFFF:
                    raise JsonError("invalid low surrogate")
                rune = 0x10000 + ((rune & 0x3FF) << 10 | (low & 0x3FF))
                if rune >= 0x10FFFF:  # protobuf's own bound
                    raise JsonError("invalid code point")
            return chr(rune)
        if char not in _ESCAPES:
            raise JsonError(f"invalid escape {char!r}")
        return _ESCAPES[char]

    def hex4(self) -> int:
        digits = self.text[self.at : self.at + 4]
        if len(digits) != 4 or any(char not in "0123456789abcdefABCDEF" for char in digits):
            raise JsonError("invalid \\u escape")
        self.at += 4
        return int(digits, 16)


@dataclass(frozen=True, slots=True)
class Jwt:
    """A token parsed and its registered claims read as jwt_verify_lib reads them (0: absent)."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes
    alg: str
    kid: str
    iss: str
    iat: int
    nbf: int
    exp: int
    audiences: tuple[str, ...]


def parse(token: str) -> Jwt | str:
    """The token, or why Envoy refuses it (its message)."""
    parts = [part for part in token.split(".") if part]
    if token.count(".") != 2 or len(parts) != 3:
        return "Jwt is not in the form of Header.Payload.Signature"
    header_text, payload_text, signature_text = parts
    header_bytes = b64url_decode(header_text)
    if header_bytes is None:
        return "Jwt header is an invalid Base64url encoded"
    header = _object(header_bytes)
    if header is None:
        return "Jwt header is an invalid JSON"
    alg = header.get("alg")
    if not isinstance(alg, str):
        return "Jwt header [alg] field is required and must be a string"
    if alg not in ALGORITHMS:
        return "Jwt header [alg] is not supported"
    kid = header.get("kid", "")
    if not isinstance(kid, str):
        return "Jwt header [kid] field is not a string"
    payload_bytes = b64url_decode(payload_text)
    if payload_bytes is None:
        return "Jwt payload is an invalid Base64url encoded"
    payload = _object(payload_bytes)
    if payload is None:
        return "Jwt payload is an invalid JSON"
    numbers: dict[str, int] = {}
    for name in ("iss", "sub"):
        if name in payload and not isinstance(payload[name], str):
            return f"Jwt payload [{name}] field is not a string"
    for name in ("iat", "nbf", "exp"):
        value = payload.get(name, 0.0)
        if not isinstance(value, float):  # the reader gives every number as a float, bools stay bools
            return f"Jwt payload [{name}] field is not an integer"
        if not 0 <= value < _UINT64:
            return f"Jwt payload [{name}] field is not a positive 64 bit integer"
        numbers[name] = int(value)
    if "jti" in payload and not isinstance(payload["jti"], str):
        return "Jwt payload [jti] field is not a string"
    audiences = payload.get("aud", [])
    if isinstance(audiences, str):
        audiences = [audiences]
    if not isinstance(audiences, list) or not all(isinstance(item, str) for item in audiences):
        return "Jwt payload [aud] field is not a string or string list"
    signature = b64url_decode(signature_text)
    if signature is None:
        return "Jwt signature is an invalid Base64url encoded"
    return Jwt(
        header=header,
        payload=payload,
        signing_input=f"{header_text}.{payload_text}".encode(),
        signature=signature,
        alg=alg,
        kid=kid,
        iss=payload.get("iss", ""),
        audiences=tuple(audiences),
        **numbers,
    )


def guard(token: str, max_bytes: int) -> str | None:
    """xgate's own checks, made on both paths before anything else (the native path's Lua filter does the
    same): the token's size, a header that asks for something neither verifier does (`crit`, RFC 7515
    4.1.11; `b64` other than true, RFC 7797), and an ECDSA signature of the wrong length. The reason, or None.
    A header that does not parse is left to the verification, which refuses it."""
    if len(token.encode()) > max_bytes:
        return "Jwt is too large"
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    header_bytes = b64url_decode(parts[0])
    header = _object(header_bytes) if header_bytes is not None else None
    if header is None:
        return None
    if "crit" in header:
        return "Jwt header has a crit parameter (extensions this verifier does not understand)"
    if "b64" in header and header["b64"] is not True:
        return "Jwt header has b64 other than true (an unencoded payload, RFC 7797)"
    alg = header.get("alg")
    expected = ECDSA_SIGNATURE_BYTES.get(alg) if isinstance(alg, str) else None
    if expected is not None and b64url_length(parts[2]) not in (expected, None):
        return "Jwt signature has the wrong length for its alg"
    return None


def _object(data: bytes) -> dict[str, Any] | None:
    try:
        value = loads(data)
    except (JsonError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def plain_number(value: float) -> int | float:
    """A JSON number as policies see it on both paths: integral values as int (up to 2^53, where a double
    is still exact), others as float."""
    return int(value) if value.is_integer() and abs(value) <= 2**53 else value


# Claims nested deeper than this reach policies and Envoy's metadata as null: the verified payload travels back
# to Envoy in the CheckResponse, and protobuf refuses messages nested 100 deep (a JSON level is 2-3 of those).
MAX_CLAIM_DEPTH = 20


def plain(value: Any, depth: int = 1) -> Any:
    """A parsed JSON value with its numbers as `plain_number` gives them, and nothing below MAX_CLAIM_DEPTH."""
    if isinstance(value, float):
        return plain_number(value)
    if isinstance(value, dict | list) and depth >= MAX_CLAIM_DEPTH:
        return None
    if isinstance(value, dict):
        return {key: plain(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item, depth + 1) for item in value]
    return value
