"""Tracing from the standard OTEL_* variables, received by a real OTLP/gRPC receiver."""

from __future__ import annotations

from pathlib import Path

import grpc
from support_daemon import start_daemon
from support_otlp import otlp_receiver  # noqa: F401  (fixture)

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
