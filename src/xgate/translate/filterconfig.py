"""HTTP filter configs over ECDS: the listener names a filter, the filter's config travels as its own resource.

A config held in the listener (the filter's typed_config) is part of the listener: changing it gives Envoy a new
listener, which drains the old one's connections over `--drain-time-s` (a keep-alive request racing the close
fails). Over ECDS the listener stays as it is and Envoy uses the new config from the next request on, on the
connections already open too. The jwt_authn filter travels so: its keys change without any other config change
(a watched `jwks_file`, a key rotation).

Envoy subscribes by the HttpFilter's name and looks a route's per-filter config up by that name too, so the
filter keeps its usual name and one config serves every listener: the listeners' configs are merged (a provider
name that would mean two things is refused before, see PluginSpec.global_names). A listener waits for its
filter configs before it takes traffic (Envoy warms it), so no request meets a filter without its config.
"""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2 as config_source_v3
from envoy.config.core.v3 import extension_pb2 as extension_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from xgate.api import type_url
from xgate.translate.protos import ads_source


def discovered_filter(name: str, kind: type[Message]) -> hcm_v3.HttpFilter:
    """The HttpFilter `name` taking its config, a `kind` message, over ECDS (see filter_config)."""
    source = config_source_v3.ExtensionConfigSource(config_source=ads_source(), type_urls=[type_url(kind)])
    return hcm_v3.HttpFilter(name=name, config_discovery=source)


def filter_config(name: str, config: Message) -> extension_v3.TypedExtensionConfig:
    """The ECDS resource carrying `config` to the filter `name`."""
    return extension_v3.TypedExtensionConfig(name=name, typed_config=_packed(config))


def merged(
    first: extension_v3.TypedExtensionConfig, second: extension_v3.TypedExtensionConfig
) -> extension_v3.TypedExtensionConfig:
    """One config holding both (map entries of `second` win; the IR made sure equal names mean equal values)."""
    if first == second:
        return first
    if (url := first.typed_config.type_url) != second.typed_config.type_url:
        raise ValueError(f"filter config {first.name}: {url} and {second.typed_config.type_url}")
    descriptor = descriptor_pool.Default().FindMessageTypeByName(first.typed_config.TypeName())
    kind = message_factory.GetMessageClass(descriptor)
    config = kind.FromString(first.typed_config.value)
    config.MergeFrom(kind.FromString(second.typed_config.value))
    return extension_v3.TypedExtensionConfig(name=first.name, typed_config=_packed(config))


def _packed(config: Message) -> any_pb2.Any:
    # Deterministic: the config's maps (jwt providers, requirements) in key order, so equal configs are equal
    # bytes, and so equal versions, across merges and control plane restarts.
    return any_pb2.Any(type_url=type_url(config), value=config.SerializeToString(deterministic=True))
