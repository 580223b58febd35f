"""The ext_proc servicer's answers, message by message (the gRPC path is covered through Envoy)."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2 as core_v3
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_v3
from google.protobuf import struct_pb2

from xgate.config.load import parse_document
from xgate.dyeing.config import dyers
from xgate.dyeing.service import UNDYED, DyeingService, DyerRegistry, source_address
from xgate.plugins.dyeing import DyeingSettings, settings_key

CONFIG = """
plugins:
  dyeing:
    rules:
      - {stage: canary, header: {name: x-canary, exact: "1"}}
      - {stage: beta, claim: {name: groups, contains: testers}}
listeners:
  - {name: public, port: 10000}
  - {name: mesh, port: 10001, plugins: {dyeing: {trust: all}}}
  - {name: broken, port: 10002, plugins: {dyeing: {rules: nope}}}
"""


def headers_request(*pairs: tuple[str, bytes], source: str = "10.0.0.1:5555") -> ext_proc_v3.ProcessingRequest:
    request = ext_proc_v3.ProcessingRequest()
    request.request_headers.SetInParent()
    for key, value in pairs:
        request.request_headers.headers.headers.add(key=key, raw_value=value)
    request.attributes["envoy.filters.http.ext_proc"].fields["source.address"].string_value = source
    return request


def with_claims(request: ext_proc_v3.ProcessingRequest, **claims: object) -> ext_proc_v3.ProcessingRequest:
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


def service() -> tuple[DyeingService, dict[str, str]]:
    config = parse_document(CONFIG, "gateway.yaml")
    found = dyers(config)  # the broken listener's settings are the control plane's to report; left out here
    registry = DyerRegistry()
    registry.replace(found)
    keys = {
        settings.settings.trust if isinstance(settings.settings.trust, str) else "": key
        for key, settings in found.items()
    }
    return DyeingService(registry), keys


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


def test_registry_keeps_the_previous_generation() -> None:
    registry = DyerRegistry()
    first = dyers(parse_document(CONFIG, "a.yaml"))
    registry.replace(first)
    registry.replace({})
    assert all(registry.get(key) is not None for key in first)  # an Envoy may still ask with the old key
    registry.replace({})
    registry.replace({})
    assert all(registry.get(key) is not None for key in first)  # unchanged replacements do not age it
    second = {settings_key(DyeingSettings()): next(iter(first.values()))}
    registry.replace(second)
    assert all(registry.get(key) is None for key in first)


def test_source_address_forms() -> None:
    assert source_address(headers_request(source="10.1.2.3:80")) == "10.1.2.3"
    assert source_address(headers_request(source="[2001:db8::1]:443")) == "2001:db8::1"
    assert source_address(ext_proc_v3.ProcessingRequest()) == ""
