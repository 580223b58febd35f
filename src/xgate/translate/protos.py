"""Small builders for protos every translator uses: durations, addresses, config sources, Any."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2 as address_v3
from envoy.config.core.v3 import config_source_pb2 as config_source_v3
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message


def duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def socket_address(host: str, port: int) -> address_v3.Address:
    return address_v3.Address(socket_address=address_v3.SocketAddress(address=host, port_value=port))


def ads_source() -> config_source_v3.ConfigSource:
    return config_source_v3.ConfigSource(
        ads=config_source_v3.AggregatedConfigSource(),
        resource_api_version=config_source_v3.ApiVersion.V3,
    )


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
