"""`aggregator --pool-mib`: the byte budget of node connections the aggregator keeps warm between fan-outs.

Issue 11 sets two targets that pull apart at 1,000 nodes: aggregator memory per known node right after a
fan-out (a connected grpc.aio channel holds ~31 KiB, most of it in gRPC core) and the fan-out's cost per
node against a warm grpc.aio call (a node past the budget reconnects on every fan-out). The budget is the
operator's choice between them (docs/security.md, "Limits"). Real parts: the CLI's parser, a real
aggregator in this process, one real NodeService on 0.0.0.0 reached at several 127.0.0.x addresses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from support_fleet import SPEC_ANY, aggregator

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.server.limits import CONNECTION_BYTES, H2_CONNECTION_BYTES, MAX_POOL_BYTES
from nodecompat.v1 import node_pb2, node_pb2_grpc, validation_pb2


class _Node(node_pb2_grpc.NodeServiceServicer):
    def ValidateImage(self, request, context):  # type: ignore[no-untyped-def]
        report = validation_pb2.ValidationReport(node_name="n", sets=[validation_pb2.SetVerdict(passed=True, weight=1)])
        return node_pb2.ValidateImageResponse(compatible=True, score=1, report=report)


@pytest.fixture
def node_port() -> Iterator[int]:
    server = grpc.server(ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
    node_pb2_grpc.add_NodeServiceServicer_to_server(_Node(), server)
    port = server.add_insecure_port("0.0.0.0:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


def test_pool_mib_flag_sets_the_budget_and_is_checked() -> None:
    from nodecompat.clients.cli import build_parser
    from nodecompat.clients.cmd_aggregator import build_config

    parser = build_parser()
    assert build_config(parser.parse_args(["aggregator"])).pool_bytes == MAX_POOL_BYTES
    assert build_config(parser.parse_args(["aggregator", "--pool-mib", "3.5"])).pool_bytes == 3.5 * 1024 * 1024
    for bad in ("0", "-1", "0.01", "nan", "inf"):
        with pytest.raises(ValueError, match="--pool-mib"):
            build_config(parser.parse_args(["aggregator", "--pool-mib", bad]))


@pytest.mark.parametrize(("transport", "unit"), [("grpc", CONNECTION_BYTES), ("h2", H2_CONNECTION_BYTES)])
def test_aggregator_keeps_the_budgets_connections_and_still_answers_for_every_node(
    node_port: int, tmp_path: Path, transport: str, unit: int
) -> None:
    """A budget of two connections (in the fan-out transport's unit: server/limits.py) and five nodes: every
    ValidateFleet answers for all five; the aggregator keeps exactly two channels pooled between calls (the
    other three get channels of their own per call). Without the budget reaching the pool, all five stay pooled."""
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps([{"name": f"n{i}", "address": f"127.0.0.{1 + i}:{node_port}"} for i in range(5)]))
    with aggregator(nodes_file=str(nodes), pool_bytes=2 * unit, check_new_nodes=False,
                    fanout_transport=transport) as agg:
        assert agg.pool.max_channels == 2
        with FleetClient(agg.address) as client:
            kept = None
            for _ in range(3):
                answer = client.validate(spec_text=SPEC_ANY, timeout=20)
                assert sorted(n.name for n in answer.nodes) == [f"n{i}" for i in range(5)]
                assert all(n.status == "OK" and n.compatible for n in answer.nodes)
                assert len(agg.pool) == 2
                kept = kept or agg.pool.addresses()
                assert agg.pool.addresses() == kept  # the same two, kept warm
