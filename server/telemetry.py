"""Tracing wiring: OpenTelemetry from the standard OTEL_* variables, gRPC spans from the instrumentation.

Off unless the environment asks for it (OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
or OTEL_TRACES_EXPORTER=otlp|console), so a plain `nodecompat serve` pays nothing: the SDK, the exporters
and the gRPC instrumentation are imported only when tracing is on, and no interceptor is installed on
servers or channels while no SDK tracer provider is (the API's no-op tracer serves the few manual spans).
When it is on, init_tracing logs one line naming each exporter and where it sends spans. The exporter, service
name, resource attributes and sampler are all read by the SDK itself from the standard variables; we
only decide whether to turn tracing on and which exporter to attach. Server and client spans come from
opentelemetry-instrumentation-grpc interceptors, which also carry W3C trace context in gRPC metadata.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from nodecompat import tracing

if TYPE_CHECKING:
    import grpc
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

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


def _endpoint(protocol: str) -> str:
    """Where the OTLP exporter for `protocol` sends spans, as the SDK resolves it (spec defaults)."""
    env = os.environ
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    if protocol == "grpc":
        return env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4317"
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


def _exporters() -> list[tuple[SpanExporter, str]]:
    """(exporter, description for the start-up log line) for each OTEL_TRACES_EXPORTER entry."""
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if n.strip()]
    out: list[tuple[SpanExporter, str]] = []
    for name in names:
        if name == "otlp":
            protocol = os.environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            ).strip().lower()
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

                out.append((OTLPSpanExporter(), f"otlp (grpc) to {_endpoint('grpc')}"))
            elif protocol == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter as OTLPHttpSpanExporter,
                )

                out.append((OTLPHttpSpanExporter(), f"otlp (http/protobuf) to {_endpoint('http/protobuf')}"))
            else:
                raise ValueError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use grpc or http/protobuf"
                )
        elif name == "console":
            out.append((ConsoleSpanExporter(), "console (stdout)"))
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
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attrs: dict[str, Any] = {}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = service_name
    provider = TracerProvider(resource=Resource.create(attrs))
    exporters = _exporters()
    for exporter, _what in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    from opentelemetry import trace

    trace.set_tracer_provider(provider)
    service = os.environ.get("OTEL_SERVICE_NAME") or service_name
    log.info(
        "tracing on: service %s, exporting spans with %s",
        service,
        "; ".join(what for _e, what in exporters) or "no exporter (OTEL_TRACES_EXPORTER names none we know)",
    )
    return provider


def tracing_installed() -> bool:
    """True when an SDK tracer provider is installed globally (by init_tracing or the embedding program).
    OpenTelemetry is not imported to find out when nothing can have installed one (fast start)."""
    if not tracing.loaded():
        return False
    from opentelemetry import trace

    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def server_interceptors() -> list[grpc.ServerInterceptor]:
    """Interceptors that open a SERVER span per RPC (continuing the caller's trace from metadata); none
    while tracing is off."""
    if not tracing_installed():
        return []
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import server_interceptor

    return [server_interceptor(tracer_provider=trace.get_tracer_provider())]


def aio_server_interceptors() -> list[object]:
    """The grpc.aio form of server_interceptors (same SERVER spans and context propagation); none while
    tracing is off."""
    if not tracing_installed():
        return []
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=trace.get_tracer_provider())]


def instrument_channel(channel: grpc.Channel) -> grpc.Channel:
    """Wrap a client channel so each call opens a CLIENT span and sends W3C trace context.

    The OpenTelemetry client interceptor implements OpenTelemetry's own `grpcext` interfaces, which
    grpc.intercept_channel rejects; grpcext.intercept_channel takes it and keeps `.future()` calls.
    """
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import client_interceptor, grpcext

    return grpcext.intercept_channel(
        channel, client_interceptor(tracer_provider=trace.get_tracer_provider())
    )
