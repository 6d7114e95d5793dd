"""server/runtime/runtime.py: a work call still running when the caller's own deadline passes is ended by gRPC
core at that deadline (the server call is cancelled with DEADLINE_EXCEEDED). The runtime used to answer it
itself at the same instant (its timer on the caller's deadline, then context.abort): when core had ended the
call first, the status went to an ended call and grpc.aio logged "ExecuteBatchError raised in core by
servicer method" at ERROR (a caller could make the daemon log errors at will). Many calls whose deadline
equals their work's duration make that race likely. A real grpc.aio Runtime on a real port."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from support_runtime import KeptServicer

from nodecompat.server.runtime.runtime import Runtime, RuntimeLimits
from nodecompat.v1 import node_pb2, node_pb2_grpc

WORK = 0.1  # s each work call takes, and each caller's deadline
CALLS = 240  # calls in all, CLIENTS at a time


class SleepingServicer(KeptServicer):
    """ValidateImage works WORK seconds (a handler still busy at its caller's deadline)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def ValidateImage(self, request: Any, context: Any) -> node_pb2.ValidateImageResponse:
        with self.lock:
            self.slow_calls += 1
        time.sleep(WORK)
        return node_pb2.ValidateImageResponse(compatible=True, score=1)


@pytest.mark.parametrize("workers", [16, 2], ids=["running", "queued"])
def test_calls_ending_at_the_callers_deadline_log_no_error(caplog: pytest.LogCaptureFixture, workers: int) -> None:
    """Every call ends DEADLINE_EXCEEDED (or OK when the work won the race) and nothing is logged at ERROR;
    "queued": most calls wait for one of 2 workers past their deadline, "running": the work is running then."""
    servicer = SleepingServicer()
    rt = Runtime("deadline-race", RuntimeLimits(workers=workers, max_concurrent_calls=64, request_timeout=2.0), [])
    rt.add_servicer(servicer, node_pb2.DESCRIPTOR.services_by_name["NodeService"])
    port = rt.bind("127.0.0.1:0", None)
    rt.start()
    codes: dict[str, int] = {}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, ThreadPoolExecutor(16) as pool, \
                caplog.at_level(logging.ERROR):
            stub = node_pb2_grpc.NodeServiceStub(ch)
            stub.ValidateImage(node_pb2.ValidateImageRequest(spec="kept"), timeout=10)  # connected

            def one(_: int) -> str:
                try:
                    stub.ValidateImage(node_pb2.ValidateImageRequest(spec="x"), timeout=WORK)
                except grpc.RpcError as exc:
                    return exc.code().name
                return "OK"

            for code in pool.map(one, range(CALLS)):
                codes[code] = codes.get(code, 0) + 1
            deadline = time.monotonic() + 30
            while rt.inflight and time.monotonic() < deadline:  # the works still running end
                time.sleep(0.05)
            assert rt.inflight == 0
            time.sleep(0.2)  # let the loop run the last calls' ends (their logs are written on the loop)
        assert set(codes) <= {"DEADLINE_EXCEEDED", "OK"}, codes
        assert codes.get("DEADLINE_EXCEEDED", 0) > CALLS // 2, codes
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[:3000]
    finally:
        rt.stop(0)
