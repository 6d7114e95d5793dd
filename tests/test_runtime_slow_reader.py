"""A caller that opens a server stream and never reads it gives its worker and admission slot back by the deadline.

Found by the hostile review: a sync streaming handler (the aggregator's live ValidateFleet) blocked on a full
buffer only checked for cancellation, so a caller with no deadline that stopped reading held a worker thread
and an admission slot until its connection closed. Real grpc.aio server (server/runtime/runtime.py) on loopback.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from nodecompat.server.runtime.runtime import Runtime, RuntimeLimits
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

BIG = "x" * 65536  # 64 KiB a message: HTTP/2 windows and the runtime's buffer fill after a few hundred


class EndlessFleet(fleet_pb2_grpc.FleetServiceServicer):
    def ValidateFleet(self, request: fleet_pb2.ValidateFleetRequest, context: object) -> Iterator[object]:
        i = 0
        while True:  # bounded by the runtime: it stops pulling once the buffer is full and the deadline passed
            i += 1
            yield fleet_pb2.ValidateFleetResponse(node=fleet_pb2.NodeResult(node_name=f"n{i}", error=BIG))


def test_a_caller_that_never_reads_releases_its_worker_and_slot_by_the_cap() -> None:
    rt = Runtime("slowreader", RuntimeLimits(workers=2, max_concurrent_calls=1, max_call_seconds=2.0), options=[])
    rt.add_servicer(EndlessFleet(), fleet_pb2.DESCRIPTOR.services_by_name["FleetService"])
    port = rt.bind("127.0.0.1:0", None)
    assert port
    rt.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = fleet_pb2_grpc.FleetServiceStub(channel)
        stalled = stub.ValidateFleet(fleet_pb2.ValidateFleetRequest(spec="x"))  # no deadline, never read
        # The stalled call holds the only admission slot while the cap runs: a second call is refused then.
        give_up = time.monotonic() + 20
        while rt.inflight == 0:
            assert time.monotonic() < give_up, "the stalled call was never admitted"
            time.sleep(0.05)
        # After the cap (2 s) the producer must stop and release the slot, although nobody reads the stream.
        give_up = time.monotonic() + 60
        while rt.inflight:
            assert time.monotonic() < give_up, "a caller that never reads kept its worker and slot past the cap"
            time.sleep(0.1)
        second = stub.ValidateFleet(fleet_pb2.ValidateFleetRequest(spec="x"), timeout=10)
        first = next(iter(second))
        assert first.node.node_name == "n1"
        second.cancel()
        stalled.cancel()
    finally:
        channel.close()
        rt.stop(grace=0)
