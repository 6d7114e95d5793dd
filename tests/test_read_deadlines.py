"""The wait for a call's request message is bounded without a timer per call (server/runtime/read_deadlines.py,
used by server/runtime/runtime.py): the loop's one timer cancels exactly the waits whose deadline passed, is
re-armed for an earlier deadline entered later, and tells its own cancellations from anybody else's.
Then, on a real grpc.aio Runtime on a real port: a half-open call ends DEADLINE_EXCEEDED at the request
timeout, a message whose half-close never comes is served at that timeout (fast path and worker path), and
no call's deadline outlives its call. No timed asserts: what is asserted is which wait ended, and in which
order, with deadlines seconds apart.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from support_dos import half_open_calls
from support_runtime import KEPT, KeptServicer

from nodecompat.server.node.node_service import serialize_or_pass
from nodecompat.server.runtime.read_deadlines import ReadDeadlines
from nodecompat.server.runtime.runtime import Runtime, RuntimeLimits
from nodecompat.v1 import node_pb2

VALIDATE = "/nodecompat.v1.NodeService/ValidateImage"


async def _wait(deadlines: ReadDeadlines, deadline: float, log: list[str], name: str) -> str:
    """A read that never completes, bounded by `deadlines` as the runtime bounds its reads."""
    task = asyncio.current_task()
    assert task is not None
    deadlines.enter(task, deadline)
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        if not deadlines.expired(task):
            log.append(f"{name} cancelled")
            raise
        log.append(f"{name} expired")
        return "expired"
    finally:
        deadlines.leave(task)
    return "read"


def test_each_wait_ends_at_its_own_deadline_and_an_earlier_one_rearms_the_timer() -> None:
    async def main() -> tuple[list[str], list[Any], int]:
        deadlines = ReadDeadlines(asyncio.get_running_loop())
        log: list[str] = []
        now = time.monotonic()
        late = asyncio.ensure_future(_wait(deadlines, now + 4.0, log, "late"))
        await asyncio.sleep(0)  # the timer is armed for +4 s first
        early = asyncio.ensure_future(_wait(deadlines, now + 0.3, log, "early"))
        other = asyncio.ensure_future(_wait(deadlines, now + 30.0, log, "other"))
        await asyncio.sleep(0)
        first = await early  # ends at +0.3 s, not with the +4 s timer
        seen = list(log)
        other.cancel()  # somebody else's cancellation is not a deadline's
        with pytest.raises(asyncio.CancelledError):
            await other
        results = [first, await late, seen]
        return log, results, len(deadlines)

    log, (first, late, seen), left = asyncio.run(main())
    assert first == "expired" and seen == ["early expired"], seen  # 'late' still waiting when 'early' ended
    assert late == "expired"
    assert log == ["early expired", "other cancelled", "late expired"]
    assert left == 0


def test_waits_that_end_before_their_deadline_are_never_cancelled() -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        deadlines = ReadDeadlines(loop)
        log: list[str] = []
        futures = []
        for _ in range(1000):
            fut = loop.create_future()
            futures.append(fut)

            async def one(f: asyncio.Future[None] = fut) -> str:
                task = asyncio.current_task()
                assert task is not None
                deadlines.enter(task, time.monotonic() + 0.2)
                try:
                    await f
                except asyncio.CancelledError:
                    log.append("expired" if deadlines.expired(task) else "cancelled")
                    raise
                finally:
                    deadlines.leave(task)
                return "read"

            futures.append(asyncio.ensure_future(one()))
        await asyncio.sleep(0)
        for f in futures[::2]:
            f.set_result(None)
        results = await asyncio.gather(*futures[1::2])
        await asyncio.sleep(0.5)  # past every deadline: the timer finds nothing to cancel
        assert set(results) == {"read"} and not log
        return len(deadlines), sum(1 for t in futures[1::2] if t.cancelled())

    left, cancelled = asyncio.run(main())
    assert (left, cancelled) == (0, 0)


@pytest.fixture
def served() -> Iterator[tuple[KeptServicer, Runtime, str]]:
    servicer = KeptServicer()
    rt = Runtime("deadline-test", RuntimeLimits(workers=2, max_concurrent_calls=8, request_timeout=1.0), [])
    rt.add_servicer(servicer, node_pb2.DESCRIPTOR.services_by_name["NodeService"],
                    {"ValidateImage": serialize_or_pass}, fast_paths={"ValidateImage": servicer.kept})
    port = rt.bind("127.0.0.1:0", None)
    rt.start()
    try:
        yield servicer, rt, f"127.0.0.1:{port}"
    finally:
        rt.stop(0)


def test_half_open_calls_end_at_the_request_timeout_and_a_message_without_half_close_is_served(served) -> None:
    servicer, rt, address = served
    stop = threading.Event()
    ch, futures = half_open_calls(address, VALIDATE, 5, stop)
    held = threading.Event()

    def one_then_hold(msg: bytes) -> Iterator[bytes]:
        yield msg
        held.wait(60)  # never half-closes while the call lasts

    try:
        with grpc.insecure_channel(address) as c2:
            as_stream = c2.stream_unary(VALIDATE)
            kept = node_pb2.ValidateImageRequest(spec="kept").SerializeToString()
            other = node_pb2.ValidateImageRequest(spec="other").SerializeToString()
            # a caller whose half-close never comes is answered at the request timeout, both paths
            assert as_stream(one_then_hold(kept), timeout=30) == KEPT
            answer = node_pb2.ValidateImageResponse.FromString(as_stream(one_then_hold(other), timeout=30))
            assert (answer.compatible, servicer.slow_calls) == (False, 1)
            for f in futures:
                exc = f.exception(timeout=30)
                assert isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "the request message did not arrive within 1 s" in (exc.details() or "")
            # a plain unary call after all that: answered, and no call's deadline is left behind
            assert c2.unary_unary(VALIDATE)(kept, timeout=10) == KEPT

            async def waiting() -> int:
                return len(rt._read_deadlines)

            assert rt.call(waiting()) == 0
    finally:
        held.set()
        stop.set()
        ch.close()
