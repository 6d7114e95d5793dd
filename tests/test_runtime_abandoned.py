"""server/runtime/runtime.py: a work call answered DEADLINE_EXCEEDED while it still waits for a worker leaves its work
queued; when a worker takes it, the work refuses to start (AbortRpc "waited for a free worker"). Nobody
awaits that outcome any more: it is read by runtime_context.abandoned, not logged by asyncio as "Future
exception was never retrieved" (one such log line per call past its deadline in an overloaded aggregator,
seen in bench_inventory's push rows). A real grpc.aio Runtime on a real port, one worker held by a call."""

from __future__ import annotations

import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from support_runtime import HoldingServicer

from nodecompat.server.runtime.runtime import Runtime, RuntimeLimits
from nodecompat.v1 import features_pb2, node_pb2, node_pb2_grpc


def test_work_refused_after_its_call_ended_is_not_logged_as_never_retrieved(
        caplog: pytest.LogCaptureFixture) -> None:
    servicer = HoldingServicer()
    rt = Runtime("abandoned-test", RuntimeLimits(workers=1, max_concurrent_calls=8, request_timeout=2.0), [])
    rt.add_servicer(servicer, node_pb2.DESCRIPTOR.services_by_name["NodeService"])
    port = rt.bind("127.0.0.1:0", None)
    rt.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, ThreadPoolExecutor(1) as pool, \
                caplog.at_level(logging.ERROR):
            stub = node_pb2_grpc.NodeServiceStub(ch)
            held = pool.submit(stub.GetFeatures, features_pb2.GetFeaturesRequest(), timeout=30)
            assert servicer.holding.wait(10)
            for _ in range(3):  # each waits for the one worker past its deadline
                with pytest.raises(grpc.RpcError) as err:
                    stub.ValidateImage(node_pb2.ValidateImageRequest(spec="x"), timeout=0.3)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            servicer.release.set()
            assert held.result(30).node_name == "held"
            deadline = time.monotonic() + 10
            while rt.inflight and time.monotonic() < deadline:  # the queued works ran (and refused to start)
                time.sleep(0.05)
            assert rt.inflight == 0 and servicer.slow_calls == 0
            gc.collect()
            time.sleep(0.2)  # a future collected on the loop's thread logs there
            gc.collect()
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()], caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    finally:
        servicer.release.set()
        rt.stop(0)
