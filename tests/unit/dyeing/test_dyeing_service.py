"""The ext_proc servicer's answers, message by message (the gRPC path is covered through Envoy)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2 as core_v3
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_v3
from google.protobuf import struct_pb2

from xgate.api import DYEING_SETTINGS, dyeing_pb2
from xgate.config.load import parse_document
from xgate.dyeing.config import DyeingService as DyeingFeed
from xgate.dyeing.service import UNDYED, DyeingService, source_address
from xgate.pipeline import compile_config

CONFIG = """
plugins:
  dyeing:
    rules:
      - {stage: canary, header: {name: x-canary, exact: "1"}}
      - {stage: beta, claim: {name: groups, contains: testers}}
listeners:
  - {name: public, port: 10000}
  - {name: mesh, port: 10001, plugins: {dyeing: {trust: all, mode: ext_proc}}}
upstreams: [{name: app, endpoints: ["127.0.0.1:1"]}]
routes: [{name: all, upstream: app}]
"""


def headers_request(*pairs: tuple[str, bytes], source: str = "10.0.0.1:5555") -> ext_proc_v3.ProcessingRequest:
    request = ext_proc_v3.ProcessingRequest()
    request.request_headers.SetInParent()
    for key, value in pairs:
        request.request_headers.headers.headers.add(key=key, raw_value=value)
    request.attributes["envoy.filters.http.ext_proc"].fields["source.address"].string_value = source
    return request


def with_claims(request: ext_proc_v3.ProcessingRequest, **claims: Any) -> ext_proc_v3.ProcessingRequest:
    payload = struct_pb2.Struct()
    payload.update(claims)
    namespace = request.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"]
    namespace.fields["jwt_payload"].struct_value.CopyFrom(payload)
    return request


def mutations(response: ext_proc_v3.ProcessingResponse) -> dict[str, str]:
    options = response.request_headers.response.header_mutation.set_headers
    for option in options:
        assert option.append_action == core_v3.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    return {option.header.key: option.header.raw_value.decode() for option in options}


def resources() -> dict[str, dyeing_pb2.DyeingSettings]:
    """The dyeing settings the control plane sends for CONFIG (one version per listener here)."""
    sent = compile_config(parse_document(CONFIG, "gateway.yaml")).resources.services[DYEING_SETTINGS]
    return {name: resource for name, resource in sent.items() if isinstance(resource, dyeing_pb2.DyeingSettings)}


def service() -> tuple[DyeingService, dict[str, str]]:
    feed = DyeingFeed()
    sent = resources()
    asyncio.run(feed.apply(sent))
    keys = {"all" if resource.trust.all else "none": key for key, resource in sent.items()}
    return DyeingService(feed.registry), keys


def test_stage_and_baggage_are_set_from_headers_and_claims() -> None:
    dyeing, keys = service()
    assert len(keys) == 2
    canary = dyeing.answer(headers_request(("x-canary", b"1"), ("baggage", b"a=1,xgate-stage=beta")), keys["none"])
    assert mutations(canary) == {"x-xgate-stage": "canary", "baggage": "a=1,xgate-stage=canary"}
    tester = dyeing.answer(with_claims(headers_request(), groups=["testers"]), keys["none"])
    assert mutations(tester)["x-xgate-stage"] == "beta"
    undecodable = dyeing.answer(headers_request(("x-canary", b"1\xff")), keys["none"])
    assert mutations(undecodable)["x-xgate-stage"] == "stable"
    kept = dyeing.answer(headers_request(("x-xgate-stage", b"beta")), keys["all"])
    assert kept.request_headers.response.HasField("header_mutation") and mutations(kept) == {}
    assert dyeing.metrics() == {"canary": 1, "beta": 2, "stable": 1}


def test_unknown_settings_and_other_messages_pass_undyed() -> None:
    dyeing, _ = service()
    unknown = dyeing.answer(headers_request(("x-canary", b"1")), "no-such-key")
    assert unknown.HasField("request_headers") and mutations(unknown) == {}
    assert dyeing.metrics() == {UNDYED: 1}
    body = ext_proc_v3.ProcessingRequest(request_body=ext_proc_v3.HttpBody(body=b"x"))
    assert dyeing.answer(body, "").WhichOneof("response") == "request_body"


def test_an_update_it_cannot_apply_is_refused_whole() -> None:
    feed = DyeingFeed()
    sent = resources()
    asyncio.run(feed.apply(sent))
    bad = dyeing_pb2.DyeingSettings(name="bad", header="x-stage", default_stage="not a stage!")
    with pytest.raises(ValueError, match="dyeing settings bad"):
        asyncio.run(feed.apply({**sent, "bad": bad}))
    assert feed.registry.keys() == sorted(sent)  # the previous set still serves, all of it
    asyncio.run(feed.apply({}))
    assert feed.registry.keys() == []


def test_source_address_forms() -> None:
    assert source_address(headers_request(source="10.1.2.3:80")) == "10.1.2.3"
    assert source_address(headers_request(source="[2001:db8::1]:443")) == "2001:db8::1"
    assert source_address(ext_proc_v3.ProcessingRequest()) == ""
