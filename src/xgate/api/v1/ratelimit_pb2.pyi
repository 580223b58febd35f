import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RateLimit(_message.Message):
    __slots__ = ("name", "domain", "entries", "requests", "per", "algorithm", "burst", "shadow")
    class Algorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TOKEN_BUCKET: _ClassVar[RateLimit.Algorithm]
        GCRA: _ClassVar[RateLimit.Algorithm]
    TOKEN_BUCKET: RateLimit.Algorithm
    GCRA: RateLimit.Algorithm
    class Entry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PER_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    domain: str
    entries: _containers.RepeatedCompositeFieldContainer[RateLimit.Entry]
    requests: int
    per: _duration_pb2.Duration
    algorithm: RateLimit.Algorithm
    burst: int
    shadow: bool
    def __init__(self, name: _Optional[str] = ..., domain: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[RateLimit.Entry, _Mapping]]] = ..., requests: _Optional[int] = ..., per: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., algorithm: _Optional[_Union[RateLimit.Algorithm, str]] = ..., burst: _Optional[int] = ..., shadow: _Optional[bool] = ...) -> None: ...
