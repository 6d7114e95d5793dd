"""Tracing wiring: OpenTelemetry from the standard OTEL_* variables, gRPC spans from the instrumentation.

Off unless the environment asks for it (OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
or OTEL_TRACES_EXPORTER=otlp|console), so a plain `nodecompat serve` pays nothing. The exporter, service
name, resource attributes and sampler are all read by the SDK itself from the standard variables; we
only decide whether to turn tracing on and which exporter to attach. Server and client spans come from
opentelemetry-instrumentation-grpc interceptors, which also carry W3C trace context in gRPC metadata.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

log = logging.getLogger(__name__)


def tracing_requested(env: os._Environ[str] | dict[str, str] | None = None) -> bool:
    """True when the OTEL_* variables ask for traces to be exported."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    if exporters:
        return True
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporters() -> list[SpanExporter]:
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if n.strip()]
    out: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            protocol = os.environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            ).strip().lower()
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

                out.append(OTLPSpanExporter())
            elif protocol == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter as OTLPHttpSpanExporter,
                )

                out.append(OTLPHttpSpanExporter())
            else:
                raise ValueError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use grpc or http/protobuf"
                )
        elif name == "console":
            out.append(ConsoleSpanExporter())
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER entry %r ignored", name)
    return out


def init_tracing(service_name: str) -> TracerProvider | None:
    """Install a global TracerProvider when OTEL_* asks for tracing; return it (None when off).

    OTEL_SERVICE_NAME, when set, wins over `service_name`. Call provider.shutdown() on exit to flush.
    Raises ValueError for an OTLP protocol we cannot speak (grpc and http/protobuf are supported).
    """
    if not tracing_requested():
        return None
    attrs: dict[str, Any] = {}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = service_name
    provider = TracerProvider(resource=Resource.create(attrs))
    for exporter in _exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def server_interceptors() -> list[grpc.ServerInterceptor]:
    """Interceptors that open a SERVER span per RPC (continuing the caller's trace from metadata)."""
    from opentelemetry.instrumentation.grpc import server_interceptor

    return [server_interceptor(tracer_provider=trace.get_tracer_provider())]


def instrument_channel(channel: grpc.Channel) -> grpc.Channel:
    """Wrap a client channel so each call opens a CLIENT span and sends W3C trace context.

    The OpenTelemetry client interceptor implements OpenTelemetry's own `grpcext` interfaces, which
    grpc.intercept_channel rejects; grpcext.intercept_channel takes it and keeps `.future()` calls.
    """
    from opentelemetry.instrumentation.grpc import client_interceptor, grpcext

    return grpcext.intercept_channel(
        channel, client_interceptor(tracer_provider=trace.get_tracer_provider())
    )
