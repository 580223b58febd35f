from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DyeingSettings(_message.Message):
    __slots__ = ("name", "header", "baggage", "default_stage", "trust", "rules")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    BAGGAGE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STAGE_FIELD_NUMBER: _ClassVar[int]
    TRUST_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    name: str
    header: str
    baggage: str
    default_stage: str
    trust: Trust
    rules: _containers.RepeatedCompositeFieldContainer[DyeRule]
    def __init__(self, name: _Optional[str] = ..., header: _Optional[str] = ..., baggage: _Optional[str] = ..., default_stage: _Optional[str] = ..., trust: _Optional[_Union[Trust, _Mapping]] = ..., rules: _Optional[_Iterable[_Union[DyeRule, _Mapping]]] = ...) -> None: ...

class Trust(_message.Message):
    __slots__ = ("none", "all", "ranges")
    NONE_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    none: bool
    all: bool
    ranges: Ranges
    def __init__(self, none: _Optional[bool] = ..., all: _Optional[bool] = ..., ranges: _Optional[_Union[Ranges, _Mapping]] = ...) -> None: ...

class Ranges(_message.Message):
    __slots__ = ("cidrs",)
    CIDRS_FIELD_NUMBER: _ClassVar[int]
    cidrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cidrs: _Optional[_Iterable[str]] = ...) -> None: ...

class DyeRule(_message.Message):
    __slots__ = ("stage", "header", "cookie", "query", "source", "claim", "sticky")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    COOKIE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    STICKY_FIELD_NUMBER: _ClassVar[int]
    stage: str
    header: HeaderRule
    cookie: CookieRule
    query: QueryRule
    source: Ranges
    claim: ClaimRule
    sticky: StickyRule
    def __init__(self, stage: _Optional[str] = ..., header: _Optional[_Union[HeaderRule, _Mapping]] = ..., cookie: _Optional[_Union[CookieRule, _Mapping]] = ..., query: _Optional[_Union[QueryRule, _Mapping]] = ..., source: _Optional[_Union[Ranges, _Mapping]] = ..., claim: _Optional[_Union[ClaimRule, _Mapping]] = ..., sticky: _Optional[_Union[StickyRule, _Mapping]] = ...) -> None: ...

class HeaderRule(_message.Message):
    __slots__ = ("name", "exact", "regex", "present")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    exact: str
    regex: str
    present: bool
    def __init__(self, name: _Optional[str] = ..., exact: _Optional[str] = ..., regex: _Optional[str] = ..., present: _Optional[bool] = ...) -> None: ...

class CookieRule(_message.Message):
    __slots__ = ("name", "exact", "present")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    exact: str
    present: bool
    def __init__(self, name: _Optional[str] = ..., exact: _Optional[str] = ..., present: _Optional[bool] = ...) -> None: ...

class QueryRule(_message.Message):
    __slots__ = ("name", "exact", "present")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    exact: str
    present: bool
    def __init__(self, name: _Optional[str] = ..., exact: _Optional[str] = ..., present: _Optional[bool] = ...) -> None: ...

class ClaimRule(_message.Message):
    __slots__ = ("name", "equals", "contains")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EQUALS_FIELD_NUMBER: _ClassVar[int]
    CONTAINS_FIELD_NUMBER: _ClassVar[int]
    name: str
    equals: _struct_pb2.Value
    contains: str
    def __init__(self, name: _Optional[str] = ..., equals: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., contains: _Optional[str] = ...) -> None: ...

class StickyRule(_message.Message):
    __slots__ = ("percent", "claim", "header", "cookie", "seed")
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    COOKIE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    percent: float
    claim: str
    header: str
    cookie: str
    seed: str
    def __init__(self, percent: _Optional[float] = ..., claim: _Optional[str] = ..., header: _Optional[str] = ..., cookie: _Optional[str] = ..., seed: _Optional[str] = ...) -> None: ...
