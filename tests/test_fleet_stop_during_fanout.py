"""SIGTERM to the aggregator while a ValidateFleet waits for a node that does not answer (server/fleet/fanout.py
run_batches, after 6f758a9 put the fan-out on the server's own event loop).

The server's loop stops at shutdown once the grace has ended; a fan-out still waiting for a slow node then
gets nothing more from its scheduler (it ran on that loop). The servicer's worker thread must not wait for it
forever: concurrent.futures joins its worker threads at interpreter exit, so such a wait kept the process
from ever exiting. Real parts: an aggregator process, a gRPC server on a real port whose ValidateImage hangs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from concurrent import futures
from pathlib import Path

import grpc
from support_daemon import free_port
from support_fleet import start_aggregator_process

from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

SPEC = """version: v1alpha1
compatibilities:
- rules:
  - name: k
    matchFeatures:
    - feature: kernel.version
      matchExpressions:
        major: {op: Exists}
"""


def test_sigterm_during_a_fan_out_to_a_hung_node_ends_the_aggregator(tmp_path: Path) -> None:
    release = threading.Event()
    arrived = threading.Event()

    def hang(_req: bytes, ctx: grpc.ServicerContext) -> bytes:
        arrived.set()
        release.wait(300)
        ctx.abort(grpc.StatusCode.UNAVAILABLE, "too late")
        return b""

    node = grpc.server(futures.ThreadPoolExecutor(4))
    node.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("nodecompat.v1.NodeService", {
        "ValidateImage": grpc.unary_unary_rpc_method_handler(
            hang, request_deserializer=lambda b: b, response_serializer=lambda b: b),
    }),))
    port = free_port()
    node.add_insecure_port(f"127.0.0.1:{port}")
    node.start()
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps([{"name": "hung", "address": f"127.0.0.1:{port}", "labels": {}}]))
    # The node's and the fleet's deadlines far beyond the shutdown's grace: only the stop can end the fan-out.
    agg = start_aggregator_process(tmp_path, "--nodes-file", str(nodes), "--node-timeout", "600",
                                   "--default-timeout", "600")
    codes: list[grpc.StatusCode] = []

    def call() -> None:
        with grpc.insecure_channel(agg.address) as ch:
            try:
                for _ in fleet_pb2_grpc.FleetServiceStub(ch).ValidateFleet(
                        fleet_pb2.ValidateFleetRequest(spec=SPEC), timeout=600):
                    pass
            except grpc.RpcError as exc:
                codes.append(exc.code())

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    try:
        assert arrived.wait(60), agg.log.read_text()  # the fan-out is waiting for the node
        agg.proc.send_signal(signal.SIGTERM)
        try:
            rc = agg.proc.wait(120)  # the grace (5 s) and the calls' end (2 x 2 s), with room for a loaded machine
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 0, f"the aggregator did not exit after SIGTERM:\n{agg.log.read_text()}"
        caller.join(60)
        assert codes and codes[0] != grpc.StatusCode.OK
    finally:
        agg.kill()
        release.set()
        node.stop(0)
