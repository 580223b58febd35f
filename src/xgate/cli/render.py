"""Turn IR and Envoy resources into plain data for `xgate translate` and the golden tests."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import yaml
from google.protobuf import json_format
from pydantic import BaseModel

from xgate.api import KINDS
from xgate.ir import GatewayIR
from xgate.translate import Resources


def ir_to_data(ir: GatewayIR) -> dict[str, Any]:
    """The IR as data, default values left out so a reader sees only what the config says."""

    def plain(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json", exclude_defaults=True)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in sorted(value.items())}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, frozenset | set):
            return sorted(plain(v) for v in value)
        return value

    data: dict[str, Any] = plain(ir)
    return data


def resources_to_data(resources: Resources) -> dict[str, dict[str, Any]]:
    """Each kind (Envoy's, then the services': "rate_limits", ...) as name -> the proto as data with the field
    names of the API's docs (snake_case), defaults left out, sorted."""
    return {
        KINDS.get(kind, kind): {
            name: json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))
            for name, message in sorted(protos.items())
        }
        for kind, protos in resources.by_kind().items()
    }


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True)
