"""Tracing from the standard OTEL_* variables, received by a real OTLP/gRPC receiver."""

from __future__ import annotations

from pathlib import Path

import grpc
from support_daemon import start_daemon
from support_otlp import OtlpHttpReceiver, otlp_http_receiver, otlp_receiver  # noqa: F401  (fixtures)

from nodecompat.server.telemetry import tracing_requested
from nodecompat.v1 import features_pb2, node_pb2_grpc

SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER


def test_daemon_exports_server_span_with_probe_round_and_probe_spans_below(tmp_path: Path, otlp_receiver) -> None:  # noqa: F811
    d = start_daemon(tmp_path, env=otlp_receiver.env("node-under-test"))
    try:
        with grpc.insecure_channel(d.address) as ch:
            node_pb2_grpc.NodeServiceStub(ch).GetFeatures(features_pb2.GetFeaturesRequest(refresh=True), timeout=20)

        def has_rpc_tree(spans) -> bool:
            return any(s.name.endswith("/GetFeatures") for s in spans) and sum(
                s.name.startswith("probe ") and s.name != "probe round" for s in spans
            ) >= 2 * 5

        spans = otlp_receiver.wait_for(has_rpc_tree)
    finally:
        assert d.terminate() == 0
    server = next(s for s in spans if s.name == "/nodecompat.v1.NodeService/GetFeatures")
    assert server.kind == SERVER_KIND
    assert server.service == "node-under-test"
    assert server.attributes.get("rpc.service") == "nodecompat.v1.NodeService"
    rounds = [s for s in spans if s.name == "probe round" and s.parent_span_id == server.span_id]
    assert len(rounds) == 1, "the refresh's probe round is a child of the RPC's server span"
    probe_spans = [s for s in spans if s.parent_span_id == rounds[0].span_id]
    assert {s.name for s in probe_spans} >= {"probe pci", "probe kernel", "probe cpu"}
    assert all(s.trace_id == server.trace_id for s in probe_spans)


def test_tracing_is_off_unless_otel_variables_ask() -> None:
    assert not tracing_requested({})
    assert tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert tracing_requested({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_requested({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1"})
    assert not tracing_requested({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1"})


def test_otlp_over_http_protobuf_reaches_an_http_receiver(
    tmp_path: Path, otlp_http_receiver: OtlpHttpReceiver  # noqa: F811 (fixture)
) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: spans are POSTed to <endpoint>/v1/traces."""
    d = start_daemon(tmp_path, env=otlp_http_receiver.env())
    try:
        with grpc.insecure_channel(d.address) as ch:
            node_pb2_grpc.NodeServiceStub(ch).GetFeatures(features_pb2.GetFeaturesRequest(), timeout=20)
    finally:
        assert d.terminate() == 0  # shutdown flushes the batch
    names = otlp_http_receiver.span_names
    assert "/nodecompat.v1.NodeService/GetFeatures" in names and "probe round" in names


def test_an_unsupported_otlp_protocol_is_refused_at_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**__import__("os").environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    done = subprocess.run([sys.executable, "-m", "nodecompat.clients.cli", "serve"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "http/json" in done.stderr and "not supported" in done.stderr
