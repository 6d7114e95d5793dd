"""Review finding: FleetClient reading a hostile aggregator's grouped ValidateFleet answer (fleet.proto
NodeGroups). A real gRPC server on a free port plays the aggregator and sends crafted messages; the client
must turn what it cannot read into FleetCallError (not a raw ValueError/OverflowError), and must not let one
message of a few hundred KB expand into node verdicts of many times its size (each node used to get its
own copy of the group's reasons and of its label set)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from support_daemon import free_port

from nodecompat.clients.fleet_client import FleetCallError, FleetClient
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc


class Hostile(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self) -> None:
        self.answer: list[fleet_pb2.ValidateFleetResponse] = []

    def ValidateFleet(self, request: fleet_pb2.ValidateFleetRequest, context: grpc.ServicerContext):
        yield from self.answer


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[Hostile, str]]:
    servicer = Hostile()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         options=[("grpc.max_send_message_length", 16 << 20)])
    fleet_pb2_grpc.add_FleetServiceServicer_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=0)


def _grouped(nodes: int, reasons: int = 1, as_of: float = 1.0, label_sets: int = 1) -> fleet_pb2.ValidateFleetResponse:
    msg = fleet_pb2.ValidateFleetResponse()
    g = msg.groups.groups.add()
    g.result.compatible = False
    g.result.status = "OK"
    g.result.reasons.extend([""] * reasons)
    g.node_names.extend(f"n{i}" for i in range(nodes))
    g.addresses.extend(f"10.0.0.{i % 250}:1" for i in range(nodes))
    g.as_of_seconds.extend([as_of] * nodes)
    g.label_sets.extend([0] * nodes)
    for _ in range(label_sets):
        msg.groups.label_sets.add().labels.update({"k": "v"})
    return msg


def _summary() -> fleet_pb2.ValidateFleetResponse:
    msg = fleet_pb2.ValidateFleetResponse()
    msg.summary.compatible = 0
    return msg


def test_an_honest_grouped_answer_reads_node_by_node(hostile: tuple[Hostile, str]) -> None:
    servicer, address = hostile
    servicer.answer = [_grouped(3, reasons=2), _summary()]
    with FleetClient(address) as client:
        answer = client.validate(spec_text="x", timeout=10.0)
    assert [n.name for n in answer.nodes] == ["n0", "n1", "n2"]
    assert all(n.reasons == ["", ""] and n.labels == {"k": "v"} for n in answer.nodes)


def test_a_grouped_message_that_expands_past_the_bound_is_refused(hostile: tuple[Hostile, str]) -> None:
    """300,000 shared reasons (600 KB on the wire) for 2,000 nodes: 600 million reason entries node by node."""
    servicer, address = hostile
    servicer.answer = [_grouped(2000, reasons=300_000), _summary()]
    seen = 0
    with FleetClient(address) as client, pytest.raises(FleetCallError) as err:
        for _ in client.stream(spec_text="x", timeout=30.0):
            seen += 1
            assert seen < 20, "node verdicts expanded from one message without a bound"
    assert err.value.code == "RESOURCE_EXHAUSTED"
    assert "expand" in err.value.message


@pytest.mark.parametrize("bad", ["columns", "inf", "nan", "huge"])
def test_a_malformed_grouped_message_is_a_call_error(hostile: tuple[Hostile, str], bad: str) -> None:
    servicer, address = hostile
    msg = _grouped(3, as_of={"inf": float("inf"), "nan": float("nan"), "huge": 1e300}.get(bad, 1.0))
    if bad == "columns":
        del msg.groups.groups[0].addresses[-1]
    servicer.answer = [msg, _summary()]
    with FleetClient(address) as client, pytest.raises(FleetCallError) as err:
        client.validate(spec_text="x", timeout=10.0)
    assert err.value.code == "INTERNAL"
    assert "grouped" in err.value.message
