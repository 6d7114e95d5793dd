"""A real OTLP/gRPC trace receiver for tests: opentelemetry-proto's collector service on a loopback port.

No OpenTelemetry Collector with an OTLP receiver installs here (environment.md §2), so the receiver is
the collector *protocol* served by grpcio: exporters under test speak real OTLP to it over a socket.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    service: str
    attributes: dict[str, object]


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for rs in request.resource_spans:
                service = ""
                for kv in rs.resource.attributes:
                    if kv.key == "service.name":
                        service = kv.value.string_value
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        attrs: dict[str, object] = {}
                        for kv in s.attributes:
                            v = kv.value
                            attrs[kv.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
                        self.spans.append(
                            ReceivedSpan(
                                name=s.name,
                                trace_id=s.trace_id.hex(),
                                span_id=s.span_id.hex(),
                                parent_span_id=s.parent_span_id.hex(),
                                kind=s.kind,
                                service=service,
                                attributes=attrs,
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    def __init__(self) -> None:
        self._collector = _Collector()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self._collector, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server.start()

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._collector.lock:
            return list(self._collector.spans)

    def clear(self) -> None:
        with self._collector.lock:
            self._collector.spans.clear()

    def wait_for(self, predicate, timeout: float = 15.0) -> list[ReceivedSpan]:
        """Wait until predicate(spans) is true; return the spans (fails the test on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.spans
            if predicate(spans):
                return spans
            time.sleep(0.1)
        raise AssertionError(f"OTLP receiver: condition not met in {timeout}s; got {[s.name for s in self.spans]}")

    def env(self, service_name: str) -> dict[str, str]:
        """OTEL_* variables that point an exporter at this receiver with fast batching."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_SERVICE_NAME": service_name,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }

    def stop(self) -> None:
        self.server.stop(0)


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    rec = OtlpReceiver()
    yield rec
    rec.stop()


class OtlpHttpReceiver:
    """A real OTLP/http trace receiver on a loopback port: POST /v1/traces (binary protobuf) answered 200;
    `bodies` holds each request body, `span_names` the spans they carried."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        bodies: list[bytes] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def span_names(self) -> list[str]:
        out = []
        for body in list(self.bodies):
            req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            out.extend(s.name for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans)
        return out

    def env(self) -> dict[str, str]:
        """OTEL_* variables that send spans here over http/protobuf with fast batching."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_BSP_SCHEDULE_DELAY": "100"}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def otlp_http_receiver() -> Iterator[OtlpHttpReceiver]:
    rec = OtlpHttpReceiver()
    yield rec
    rec.stop()
