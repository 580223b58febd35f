"""The OTLP exporter imports: xds-protos ships an old copy of the OpenTelemetry protos under the same module names,
and scripts/install.sh must reinstall opentelemetry-proto after it (see there)."""

from __future__ import annotations

from importlib.metadata import requires, version


def test_the_otlp_exporter_imports_over_xds_protos() -> None:
    # With xds-protos' copy of the protos this import fails: cannot import name 'InstrumentationScope'.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.common.v1 import common_pb2

    assert OTLPSpanExporter.__name__ == "OTLPSpanExporter"
    assert "InstrumentationScope" in common_pb2.DESCRIPTOR.message_types_by_name


def test_the_installed_protos_are_the_exporters_version() -> None:
    wanted = next(
        r for r in requires("opentelemetry-exporter-otlp-proto-grpc") or [] if r.startswith("opentelemetry-proto")
    )
    assert wanted.replace(" ", "") == f"opentelemetry-proto=={version('opentelemetry-proto')}"
