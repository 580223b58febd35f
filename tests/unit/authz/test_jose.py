"""The Python path's reading of tokens, held to what Envoy 1.40's jwt_authn was measured to do (each case here
is one of tests/integration/jwt_classes.py's, where both paths answer it through a real Envoy)."""

from __future__ import annotations

import base64
import json

import pytest

from xgate.authz import jose


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,}', '{"a":[1,2,]}', "{'a':'x\"y'}", '{a_1:1}', '{"a":"t\tb\x01"}', '{"a":"b\\\'c\\U0041"}',
        '{"a":"\\ud83d\\ude00"}', '{"a":-0}', '{"a":1e05,"b":1E+5,"c":0.0e0}', '{"a":1 ,"b":2}', '{"":1}',
        ' {\n"a" : [ true , false , null ] } ', '{"o":' + "[" * 99 + "1" + "]" * 99 + "}",
    ],
)  # fmt: skip
def test_what_envoys_json_reader_takes(text: str) -> None:
    assert isinstance(jose.loads(text.encode()), dict)


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"a":2}', b'{"o":{"a":1,"a":2}}', b'{"a":NaN}', b'{"a":Infinity}', b'{"a":1e400}', b'{"a":01}',
        b'{"a":+1}', b'{"a":.5}', b'{"a":5.}', b'{"a":1.e5}', b'{"a":1e}', b'{"a":--1}', b'{"a":1.5.5}',
        b'{,"a":1}', b'{"a":1,,"b":2}', b'{"a":[,]}', b'{1a:1}', b'{null:1}', b'{a-b:1}', b'{"a":1 /* c */}',
        b'\xef\xbb\xbf{}', b'{} x', b'{}{}', b'{"a":truex}', b'{"a":True}', b'{"a":"\\q"}', b'{"a":"\\ud800"}',
        b'{"a":"\\udc00"}', b'{"a":"\\ud83d\\u0041"}', b'{"a":"\\u00g9"}', b'{"a":"\xff"}', b'{"a":"\xc0\xaf"}',
        b'{"a":"\xed\xa0\x80"}', b'{\x0b"a":1}', b'{"a":"x', b"",
        b'{"o":' + b"[" * 100 + b"1" + b"]" * 100 + b"}",
    ],
)  # fmt: skip
def test_what_envoys_json_reader_refuses(data: bytes) -> None:
    with pytest.raises(jose.JsonError):
        jose.loads(data)


def test_base64url_as_absl_reads_it() -> None:
    assert jose.b64url_decode("YWJj") == b"abc"
    assert jose.b64url_decode("YWI") == b"ab"
    assert jose.b64url_decode("YWI=") == b"ab"  # padding optional, but right when there
    assert jose.b64url_decode("YWI==") is None
    assert jose.b64url_decode("YWM") == jose.b64url_decode("YWN") == b"ac"  # unused bits ignored
    assert jose.b64url_decode(" Y W\tI ") == b"ab"  # whitespace skipped
    assert jose.b64url_decode("YW+/") is None  # standard alphabet
    assert jose.b64url_decode("Y") is None
    assert jose.b64url_decode("YW=I") is None


def token(header: object, payload: object, signature: bytes = b"sig") -> str:
    def part(value: object) -> str:
        return b64((value if isinstance(value, str) else json.dumps(value)).encode())

    return f"{part(header)}.{part(payload)}.{b64(signature)}"


@pytest.mark.parametrize(
    ("header", "payload", "message"),
    [
        ({"alg": 1}, {}, "Jwt header [alg] field is required and must be a string"),
        ({"alg": "rs256"}, {}, "Jwt header [alg] is not supported"),
        ({"alg": "RS256", "kid": 1}, {}, "Jwt header [kid] field is not a string"),
        ({"alg": "RS256"}, {"sub": 1}, "Jwt payload [sub] field is not a string"),
        ({"alg": "RS256"}, {"iss": None}, "Jwt payload [iss] field is not a string"),
        ({"alg": "RS256"}, {"jti": 7}, "Jwt payload [jti] field is not a string"),
        ({"alg": "RS256"}, {"exp": "1"}, "Jwt payload [exp] field is not an integer"),
        ({"alg": "RS256"}, {"exp": True}, "Jwt payload [exp] field is not an integer"),
        ({"alg": "RS256"}, {"exp": -1}, "Jwt payload [exp] field is not a positive 64 bit integer"),
        ({"alg": "RS256"}, {"exp": 2**64}, "Jwt payload [exp] field is not a positive 64 bit integer"),
        ({"alg": "RS256"}, {"iat": -5}, "Jwt payload [iat] field is not a positive 64 bit integer"),
        ({"alg": "RS256"}, {"aud": ["a", 1]}, "Jwt payload [aud] field is not a string or string list"),
        ({"alg": "RS256"}, {"aud": [["a"]]}, "Jwt payload [aud] field is not a string or string list"),
        ('["RS256"]', {}, "Jwt header is an invalid JSON"),
        ({"alg": "RS256"}, "[1]", "Jwt payload is an invalid JSON"),
    ],
)
def test_claims_of_the_wrong_type_are_refused_as_jwt_verify_lib_does(
    header: object, payload: object, message: str
) -> None:
    assert jose.parse(token(header, payload)) == message


def test_registered_claims_as_jwt_verify_lib_reads_them() -> None:
    parsed = jose.parse(token({"alg": "RS256", "kid": ""}, {"exp": 2**63, "nbf": 10.9, "aud": "a", "iss": "i"}))
    assert isinstance(parsed, jose.Jwt)
    assert (parsed.kid, parsed.exp, parsed.nbf, parsed.iat, parsed.audiences, parsed.iss) == (
        "",
        2**63,
        10,
        0,
        ("a",),
        "i",
    )
    assert (
        jose.parse("a.b")
        == jose.parse("a..c")
        == jose.parse("a.b.c.d")
        == ("Jwt is not in the form of Header.Payload.Signature")
    )


@pytest.mark.parametrize(
    ("header", "refused"),
    [
        ({"alg": "RS256", "crit": ["x"]}, True),
        ('{"alg":"RS256","crit":null}', True),
        ('{"alg":"RS256","\\u0063rit":[]}', True),
        ("{'alg':'RS256',crit:[]}", True),
        ({"alg": "RS256", "b64": False}, True),
        ({"alg": "RS256", "b64": "true"}, True),
        ({"alg": "RS256", "b64": True}, False),
        ({"alg": "RS256", "x-crit": 1}, False),
        ('{"alg":"RS256","crit":1,"crit":2}', False),  # not JSON Envoy reads: the verification refuses it
    ],
)
def test_the_guard(header: object, refused: bool) -> None:
    assert (jose.guard(token(header, {}), 8192) is not None) == refused


def test_the_guard_checks_size_and_ecdsa_signature_length() -> None:
    assert jose.guard(token({"alg": "RS256"}, {"pad": "x" * 9000}), 8192) == "Jwt is too large"
    assert jose.guard(token({"alg": "ES256"}, {}, bytes(64)), 8192) is None
    assert jose.guard(token({"alg": "ES256"}, {}, bytes(66)), 8192) is not None
    assert jose.guard(token({"alg": "ES384"}, {}, bytes(96)), 8192) is None
    assert jose.guard(token({"alg": "RS256"}, {}, bytes(66)), 8192) is None


def test_claims_are_handed_on_with_integral_numbers_as_int_and_no_deeper_than_the_limit() -> None:
    deep: object = 1
    for _ in range(30):
        deep = [deep]
    claims = jose.plain({"exp": 1700000000.0, "f": 1.5, "big": 2.0**60, "deep": deep})
    assert claims["exp"] == 1700000000 and isinstance(claims["exp"], int)
    assert claims["f"] == 1.5 and claims["big"] == 2.0**60
    level, value = 0, claims["deep"]
    while isinstance(value, list):
        level, value = level + 1, value[0]
    assert value is None and level < jose.MAX_CLAIM_DEPTH
