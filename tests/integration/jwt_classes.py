"""Token classes both JWT paths must answer alike, each with the answer xgate settled on: a request (headers,
query) carrying tokens signed by keys made here, so a hostile shape is properly signed and only the class's own
trait is under test. test_jwt_agreement.py sends each through both paths of one gateway.

The answers are Envoy's jwt_authn's (1.40, measured), except where it is weaker than the Python path was: a
`crit` or `b64` header member, an oversized token and an ECDSA signature with leading zero bytes are refused on
both paths (401) by xgate's guard. Where Envoy is the stricter one (claim types, duplicate members, every
token of a request), the Python path now refuses too; where its JSON reader is lenient (trailing commas,
single quotes, bare keys), the Python path reads the same JSON.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://agree.test"
AUDIENCE = "api"
MAX_TOKEN_BYTES = 8192  # the default
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # an attacker's
RS = {"alg": "RS256", "kid": "rsa-1"}
ES = {"alg": "ES256", "kid": "ec-1"}


def public_jwk(key: Any, kid: str) -> dict[str, Any]:
    converter: Any = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk: dict[str, Any] = json.loads(converter.to_jwk(key.public_key()))
    jwk["kid"] = kid
    return jwk


JWKS = {"keys": [public_jwk(RSA_KEY, "rsa-1"), public_jwk(EC_KEY, "ec-1")]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    """A JSON value as a token segment; a str is the JSON text itself (duplicate keys, NaN, ...)."""
    return b64((value if isinstance(value, str) else json.dumps(value)).encode("utf-8", "surrogatepass"))


def sign(header: Any, payload: Any, *, key: Any = RSA_KEY) -> str:
    """header.payload.signature with `key` (RS256 for RSA, ES256 for EC), whatever the header says."""
    return sign_raw(segment(header), segment(payload), key=key)


def sign_raw(header_b64: str, payload_b64: str, *, key: Any = RSA_KEY) -> str:
    signing_input = f"{header_b64}.{payload_b64}"
    return f"{signing_input}.{b64(_signature(key, signing_input.encode()))}"


def _signature(key: Any, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def claims(**changes: Any) -> dict[str, Any]:
    """Good claims for the provider; a change to None leaves that claim out."""
    now = int(time.time())
    values: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ada", "iat": now, "exp": now + 600}
    values.update(changes)
    return {name: value for name, value in values.items() if value is not None}


def payload(extra: str = "", *, aud: str = '"api"', exp: int | None = None) -> str:
    """A payload's JSON text with `extra` members (or anything) inserted before the closing brace."""
    expires = int(time.time()) + 600 if exp is None else exp
    return f'{{"iss":"{ISSUER}","aud":{aud},"exp":{expires}{extra}}}'


def sized(length: int) -> str:
    """A valid RS256 token of about `length` bytes: the largest not over it."""
    base = len(sign(RS, claims(pad="")))
    pad = max(0, (length - base) * 3 // 4)
    while len(token := sign(RS, claims(pad="x" * pad))) > length:
        pad -= 1
    return token


@dataclass(frozen=True)
class Case:
    """One request: `token` in `Authorization: Bearer`, or `headers` (repeated names allowed) and a query
    string, to a route of provider `variant` ("": issuer, audience, header/query/cookie; "L": max_lifetime 1h;
    "X": require_exp false; "H": headers x-tok (no prefix) and authorization); `expect`: the status."""

    expect: int
    token: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    query: str = ""
    variant: str = ""

    def request_headers(self) -> list[tuple[str, str]]:
        sent = list(self.headers)
        if self.token is not None:
            sent.append(("authorization", f"Bearer {self.token}"))
        return sent


def cases() -> dict[str, Case]:
    """Every class, by name. Tokens are minted now: exp is 10 minutes from the call."""
    now = int(time.time())
    good = sign(RS, claims())
    h, p, s = good.split(".")
    es_good = sign(ES, claims(), key=EC_KEY)
    es_h, es_p, es_s = es_good.split(".")
    es_raw = base64.urlsafe_b64decode(es_s + "==")
    zero = bytes(1)
    return {
        "good": Case(200, good),
        "good-es256": Case(200, es_good),
        # the basic classes: time, issuer, audience, algorithm, key, signature, shape, missing claims
        "expired": Case(401, sign(RS, claims(exp=now - 3600))),
        "expired-within-skew": Case(200, sign(RS, claims(exp=now - 20))),
        "nbf-future": Case(401, sign(RS, claims(nbf=now + 3600))),
        "nbf-within-skew": Case(200, sign(RS, claims(nbf=now + 20))),
        "wrong-issuer": Case(401, sign(RS, claims(iss="https://evil.test"))),
        "wrong-audience": Case(403, sign(RS, claims(aud="web"))),
        "alg-none": Case(401, f"{segment({'alg': 'none', 'kid': 'rsa-1'})}.{p}."),
        "alg-none-signed": Case(401, sign({"alg": "none", "kid": "rsa-1"}, claims())),
        "alg-hs256-rsa-pem": Case(401, hs256({"alg": "HS256", "kid": "rsa-1"}, claims(), _rsa_pem())),
        "alg-hs256-rsa-jwk": Case(401, hs256({"alg": "HS256"}, claims(), json.dumps(JWKS["keys"][0]).encode())),
        "alg-es256-with-rsa-kid": Case(401, sign({"alg": "ES256", "kid": "rsa-1"}, claims(), key=EC_KEY)),
        "bad-signature": Case(401, f"{h}.{p}.{_flipped(s)}"),
        "other-key-same-kid": Case(401, sign(RS, claims(), key=OTHER_KEY)),
        "claims-tampered": Case(401, f"{h}.{segment(claims(sub='root'))}.{s}"),
        "signature-stripped": Case(401, f"{h}.{p}."),
        "two-segments": Case(401, f"{h}.{p}"),
        "not-a-jwt": Case(401, "not-a-jwt"),
        "empty-payload": Case(401, sign(RS, {})),
        "missing-iss": Case(401, sign(RS, claims(iss=None))),
        "missing-aud": Case(403, sign(RS, claims(aud=None))),
        "missing-sub-iat": Case(200, sign(RS, claims(sub=None, iat=None))),
        "missing-token": Case(401),
        # crit and b64 (RFC 7515 4.1.11, RFC 7797): jwt_authn ignores both; the guard refuses
        "crit-unknown": Case(401, sign({**RS, "crit": ["x-ext"], "x-ext": 1}, claims())),
        "crit-empty": Case(401, sign({**RS, "crit": []}, claims())),
        "crit-string": Case(401, sign({**RS, "crit": "exp"}, claims())),
        "crit-null": Case(401, sign('{"alg":"RS256","kid":"rsa-1","crit":null}', claims())),
        "crit-escaped": Case(401, sign('{"alg":"RS256","kid":"rsa-1","\\u0063rit":["x"],"x":1}', claims())),
        "crit-single-quoted": Case(401, sign("{'alg':'RS256','kid':'rsa-1','crit':['x'],'x':1}", claims())),
        "crit-bare-key": Case(401, sign('{"alg":"RS256","kid":"rsa-1",crit:["x"],"x":1}', claims())),
        "crit-wrong-audience": Case(401, sign({**RS, "crit": ["x"], "x": 1}, claims(aud="web"))),
        "b64-false": Case(401, sign({**RS, "b64": False}, claims())),
        "b64-false-in-crit": Case(401, sign({**RS, "b64": False, "crit": ["b64"]}, claims())),
        "b64-string": Case(401, sign({**RS, "b64": "true"}, claims())),
        "b64-true": Case(200, sign({**RS, "b64": True}, claims())),
        "kid-crit-lookalike": Case(200, sign({"alg": "RS256", "kid": "rsa-1", "x-crit": 1}, claims())),
        # size: max_token_bytes (8 KiB by default) on both paths
        "size-at-limit": Case(200, sized(MAX_TOKEN_BYTES)),
        "size-over-limit": Case(401, sized(MAX_TOKEN_BYTES + 3)),
        "size-16k": Case(401, sized(16 * 1024)),
        "size-16k-wrong-audience": Case(401, sign(RS, claims(aud="web", pad="x" * 12 * 1024))),
        "size-16k-in-query": Case(401, None, query=f"access_token={sized(16 * 1024)}"),
        # registered claims of the wrong type or range: jwt_verify_lib refuses, now both
        "sub-number": Case(401, sign(RS, claims(sub=42))),
        "sub-list": Case(401, sign(RS, claims(sub=["ada"]))),
        "sub-null": Case(401, sign(RS, payload(',"sub":null'))),
        "jti-number": Case(401, sign(RS, claims(jti=7))),
        "jti-null": Case(401, sign(RS, payload(',"jti":null'))),
        "jti-string": Case(200, sign(RS, claims(jti="7"))),
        "iss-number": Case(401, sign(RS, claims(iss=1))),
        "aud-number": Case(401, sign(RS, claims(aud=1))),
        "aud-list-number": Case(401, sign(RS, claims(aud=[AUDIENCE, 1]))),
        "aud-null": Case(401, sign(RS, payload(aud="null"))),
        "aud-nested-list": Case(401, sign(RS, payload(aud='[["api"]]'))),
        "aud-empty-list": Case(403, sign(RS, claims(aud=[]))),
        "exp-2^64": Case(401, sign(RS, claims(exp=2**64))),
        "exp-2^64-as-float": Case(401, sign(RS, payload(exp=0).replace('"exp":0', '"exp":1.8446744073709552e19'))),
        "exp-2^63": Case(200, sign(RS, claims(exp=2**63))),
        "exp-1e300": Case(401, sign(RS, payload(exp=0).replace('"exp":0', '"exp":1e300'))),
        "exp-negative": Case(401, sign(RS, claims(exp=-1))),
        "exp-zero": Case(401, sign(RS, claims(exp=0))),
        "exp-fraction": Case(200, sign(RS, claims(exp=now + 600.5))),
        "exp-exponent": Case(200, sign(RS, payload(exp=0).replace('"exp":0', f'"exp":{now + 600}e0'))),
        "exp-string": Case(401, sign(RS, claims(exp=str(now + 600)))),
        "exp-bool": Case(401, sign(RS, claims(exp=True))),
        "exp-null": Case(401, sign(RS, payload(exp=0).replace('"exp":0', '"exp":null'))),
        "exp-2^53+1": Case(200, sign(RS, claims(exp=2**53 + 1))),
        "nbf-fraction": Case(200, sign(RS, claims(nbf=now - 10.5))),
        "iat-future": Case(200, sign(RS, claims(iat=now + 3600))),
        "iat-negative": Case(401, sign(RS, claims(iat=-5))),
        "iat-string": Case(401, sign(RS, claims(iat=str(now)))),
        # duplicate members (protobuf's reader refuses them, at any depth)
        "dup-exp": Case(401, sign(RS, payload(f',"exp":{now - 3600}'))),
        "dup-exp-last-good": Case(401, sign(RS, payload(exp=now + 600).replace("{", f'{{"exp":{now - 3600},', 1))),
        "dup-sub": Case(401, sign(RS, payload(',"sub":"a","sub":"b"'))),
        "dup-nested": Case(401, sign(RS, payload(',"o":{"a":1,"a":2}'))),
        "dup-alg": Case(401, sign('{"alg":"none","alg":"RS256","kid":"rsa-1"}', claims())),
        "dup-kid": Case(401, sign('{"alg":"RS256","kid":"nope","kid":"rsa-1"}', claims())),
        # header members
        "alg-number": Case(401, sign({"alg": 256, "kid": "rsa-1"}, claims())),
        "alg-missing": Case(401, sign({"kid": "rsa-1"}, claims())),
        "alg-lower-case": Case(401, sign({"alg": "rs256", "kid": "rsa-1"}, claims())),
        "kid-number": Case(401, sign({"alg": "RS256", "kid": 1}, claims())),
        "kid-empty": Case(200, sign({"alg": "RS256", "kid": ""}, claims())),
        "kid-unknown": Case(401, sign({"alg": "RS256", "kid": "nope"}, claims())),
        "kid-absent": Case(200, sign({"alg": "RS256"}, claims())),
        "typ-number": Case(200, sign({**RS, "typ": 1}, claims())),
        "cty-jwt": Case(200, sign({**RS, "cty": "JWT"}, claims())),
        "nested-jws": Case(401, sign({**RS, "cty": "JWT"}, json.dumps(good))),
        "header-not-object": Case(401, sign('["RS256"]', claims())),
        "payload-list": Case(401, sign(RS, "[1]")),
        # JSON as protobuf's (legacy) reader reads it
        "json-trailing-comma": Case(200, sign(RS, payload(","))),
        "json-trailing-comma-in-list": Case(200, sign(RS, payload(aud='["api",]'))),
        "json-double-comma": Case(401, sign(RS, payload(",,"))),
        "json-single-quotes": Case(200, sign(RS, payload(",'x':'a\"b'"))),
        "json-bare-key": Case(200, sign(RS, payload(",x_1:1"))),
        "json-bare-key-digit": Case(401, sign(RS, payload(",1x:1"))),
        "json-raw-control": Case(200, sign(RS, payload(',"x":"a\tb\x01"'))),
        "json-escape-quote": Case(200, sign(RS, payload(',"x":"a\\\'b\\U0041"'))),
        "json-bad-escape": Case(401, sign(RS, payload(',"x":"\\q"'))),
        "json-lone-surrogate": Case(401, sign(RS, payload(',"x":"\\ud800"'))),
        "json-surrogate-pair": Case(200, sign(RS, payload(',"x":"\\ud83d\\ude00"'))),
        "json-nan": Case(401, sign(RS, payload(',"x":NaN'))),
        "json-infinite": Case(401, sign(RS, payload(',"x":1e400'))),
        "json-leading-zero": Case(401, sign(RS, payload(',"x":01'))),
        "json-comment": Case(401, sign(RS, payload(" /* c */"))),
        "json-bom": Case(401, sign(RS, "\ufeff" + payload())),
        "json-trailing-text": Case(401, sign(RS, payload() + " x")),
        "json-depth-100": Case(200, sign(RS, payload(',"o":' + "[" * 99 + "1" + "]" * 99))),
        "json-depth-101": Case(401, sign(RS, payload(',"o":' + "[" * 100 + "1" + "]" * 100))),
        "json-not-utf8": Case(401, sign_raw(segment(RS), b64(payload(',"x":"\xff"').encode("latin-1")))),
        "json-overlong-utf8": Case(401, sign_raw(segment(RS), b64(payload().encode()[:-1] + b',"x":"\xc0\xaf"}'))),
        "header-trailing-comma": Case(200, sign('{"alg":"RS256","kid":"rsa-1",}', claims())),
        # base64url as absl reads it
        "b64-padded-signature": Case(200, f"{h}.{p}.{s}=="),
        "b64-wrong-padding": Case(401, f"{h}.{p}.{s}="),
        "b64-standard-alphabet": Case(401, f"{h}.{p}.{s.replace('-', '+').replace('_', '/')}"),
        "b64-non-canonical": Case(200, sign_raw(_non_canonical(segment(RS)), segment(claims()))),
        # ECDSA signature lengths (RFC 7518 3.4: r || s, 32 bytes each for ES256)
        "es256-leading-zeros": Case(401, f"{es_h}.{es_p}.{b64(zero + es_raw[:32] + zero + es_raw[32:])}"),
        "es256-short": Case(401, f"{es_h}.{es_p}.{b64(es_raw[:63])}"),
        "rs256-leading-zero": Case(401, f"{h}.{p}.{b64(zero + base64.urlsafe_b64decode(s + '=='))}"),
        # audience as jwt_verify_lib compares it: no scheme, no trailing slash
        "aud-with-scheme": Case(200, sign(RS, claims(aud="https://api"))),
        "aud-trailing-slash": Case(200, sign(RS, claims(aud="http://api/"))),
        "aud-two-slashes": Case(403, sign(RS, claims(aud="api//"))),
        "aud-upper-scheme": Case(403, sign(RS, claims(aud="HTTPS://api"))),
        # the order of the checks decides the status: issuer, time, audience (403), exp/lifetime, key, signature
        "wrong-issuer-expired": Case(401, sign(RS, claims(iss="https://evil.test", exp=now - 3600))),
        "expired-wrong-audience": Case(401, sign(RS, claims(aud="web", exp=now - 3600))),
        "no-exp-wrong-audience": Case(403, sign(RS, claims(aud="web", exp=None))),
        "forged-wrong-audience": Case(403, sign(RS, claims(aud="web"), key=EC_KEY)),
        "unknown-kid-wrong-audience": Case(403, sign({"alg": "RS256", "kid": "zz"}, claims(aud="web"))),
        "no-exp": Case(401, sign(RS, claims(exp=None))),
        "lifetime-too-long": Case(401, sign(RS, claims(exp=now + 7200)), variant="L"),
        "lifetime-old-iat": Case(200, sign(RS, claims(iat=now - 36000)), variant="L"),
        "lifetime-no-exp": Case(401, sign(RS, claims(exp=None)), variant="L"),
        "optional-exp-absent": Case(200, sign(RS, claims(exp=None)), variant="X"),
        "optional-exp-zero": Case(200, sign(RS, claims(exp=0)), variant="X"),
        # where tokens are: every one found must verify, the last found is checked first
        "prefix-after-other-scheme": Case(200, None, (("authorization", f"Basic x, Bearer {good}"),)),
        "text-after-token": Case(401, None, (("authorization", f"Bearer {good} junk"),)),
        "space-inside-token": Case(401, None, (("authorization", f"Bearer {h}. {p}.{s}"),)),
        "bearer-lower-case": Case(401, None, (("authorization", f"bearer {good}"),)),
        "two-headers-good-bad": Case(401, None, (("authorization", f"Bearer {good}"), ("authorization", "Bearer x"))),
        # Envoy joins a repeated Authorization (an inline header) with a comma: the token is then "<good>,Bearer
        # <good>", refused on both paths; a repeated custom header stays two values, each a token
        "two-headers-both-good": Case(401, None, (("authorization", f"Bearer {good}"),) * 2),
        "two-custom-headers-both-good": Case(200, None, (("x-tok", good),) * 2, variant="H"),
        "two-custom-headers-good-bad": Case(401, None, (("x-tok", good), ("x-tok", "bad")), variant="H"),
        "header-good-query-bad": Case(401, good, query="access_token=bad"),
        "header-good-cookie-bad": Case(401, good, (("cookie", "tok=bad"),)),
        "cookie-wrong-audience-header-bad": Case(403, None, (
            ("authorization", "Bearer bad"), ("cookie", "tok=" + sign(RS, claims(aud="web"))))),
        "query-percent-encoded": Case(200, None, query=f"access_token={good.replace('.', '%2E')}"),
        "query-first-value": Case(200, None, query=f"access_token={good}&access_token=bad"),
        "query-empty": Case(401, None, query="access_token="),
        "cookie-first-of-name": Case(200, None, (("cookie", f"tok={good}; tok=bad"),)),
        "cookie-second-header": Case(200, None, (("cookie", "a=1"), ("cookie", f"tok={good}"))),
        "cookie-quoted": Case(200, None, (("cookie", f'tok="{good}"'),)),
        "header-empty-no-prefix": Case(401, None, (("x-tok", ""),), variant="H"),
        "header-no-prefix-and-bearer": Case(401, None, (("x-tok", good), ("authorization", "Bearer bad")), variant="H"),
    }  # fmt: skip


def hs256(header: Any, payload: Any, secret: bytes) -> str:
    """header.payload.HMAC-SHA256 with `secret`: the algorithm-confusion attack on an RSA public key."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def _rsa_pem() -> bytes:
    return RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _flipped(signature: str) -> str:
    """The signature with one bit of its first byte changed."""
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[0] ^= 1
    return b64(bytes(raw))


def _non_canonical(text: str) -> str:
    """The same bytes with the unused low bit of the last base64url character set (when there is one)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    if len(text) % 4 in (2, 3):
        return text[:-1] + alphabet[alphabet.index(text[-1]) ^ 1]
    return text
