import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Policy(_message.Message):
    __slots__ = ("name", "import_path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMPORT_PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    import_path: str
    def __init__(self, name: _Optional[str] = ..., import_path: _Optional[str] = ...) -> None: ...

class JwtProvider(_message.Message):
    __slots__ = ("name", "issuer", "audiences", "jwks_json", "jwks_file", "jwks_uri", "jwks_ca_file", "jwks_refresh", "jwks_min_refetch", "algorithms", "required_claims", "headers", "cookies", "query", "forward_claims", "clock_skew", "require_exp", "max_lifetime", "max_token_bytes")
    class ForwardClaimsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    JWKS_JSON_FIELD_NUMBER: _ClassVar[int]
    JWKS_FILE_FIELD_NUMBER: _ClassVar[int]
    JWKS_URI_FIELD_NUMBER: _ClassVar[int]
    JWKS_CA_FILE_FIELD_NUMBER: _ClassVar[int]
    JWKS_REFRESH_FIELD_NUMBER: _ClassVar[int]
    JWKS_MIN_REFETCH_FIELD_NUMBER: _ClassVar[int]
    ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_CLAIMS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    COOKIES_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    FORWARD_CLAIMS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_SKEW_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_EXP_FIELD_NUMBER: _ClassVar[int]
    MAX_LIFETIME_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKEN_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    issuer: str
    audiences: _containers.RepeatedScalarFieldContainer[str]
    jwks_json: str
    jwks_file: str
    jwks_uri: str
    jwks_ca_file: str
    jwks_refresh: _duration_pb2.Duration
    jwks_min_refetch: _duration_pb2.Duration
    algorithms: _containers.RepeatedScalarFieldContainer[str]
    required_claims: _containers.RepeatedScalarFieldContainer[str]
    headers: _containers.RepeatedCompositeFieldContainer[TokenHeader]
    cookies: _containers.RepeatedScalarFieldContainer[str]
    query: _containers.RepeatedScalarFieldContainer[str]
    forward_claims: _containers.ScalarMap[str, str]
    clock_skew: _duration_pb2.Duration
    require_exp: bool
    max_lifetime: _duration_pb2.Duration
    max_token_bytes: int
    def __init__(self, name: _Optional[str] = ..., issuer: _Optional[str] = ..., audiences: _Optional[_Iterable[str]] = ..., jwks_json: _Optional[str] = ..., jwks_file: _Optional[str] = ..., jwks_uri: _Optional[str] = ..., jwks_ca_file: _Optional[str] = ..., jwks_refresh: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., jwks_min_refetch: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., algorithms: _Optional[_Iterable[str]] = ..., required_claims: _Optional[_Iterable[str]] = ..., headers: _Optional[_Iterable[_Union[TokenHeader, _Mapping]]] = ..., cookies: _Optional[_Iterable[str]] = ..., query: _Optional[_Iterable[str]] = ..., forward_claims: _Optional[_Mapping[str, str]] = ..., clock_skew: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., require_exp: _Optional[bool] = ..., max_lifetime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_token_bytes: _Optional[int] = ...) -> None: ...

class TokenHeader(_message.Message):
    __slots__ = ("name", "prefix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    prefix: str
    def __init__(self, name: _Optional[str] = ..., prefix: _Optional[str] = ...) -> None: ...
