"""A caller cancelled while the lean HTTP/2 client connects stays cancelled, even when the connect fails in the
same loop iteration (server/h2/connection.py for WatchFeatures streams, server/h2/unary.py for fan-out calls).

On Python 3.11, asyncio.wait_for turns a cancellation that lands together with its inner call's end into that
end (CPython gh-86296, fixed in 3.12): a refused port answers at once, so a subscription cancelled by
InventorySync.stop() just then saw UNAVAILABLE instead, went on to its backoff sleep, and stop() waited its
whole 10 s bound (seen in the suite: test_the_entry_bound_counts_the_listed_nodes, 10.0-11.1 s in 2 runs of 3).

The race is made exact here: the connect is a future of ours that fails (ConnectionRefusedError, what a closed
port gives) in the same callback that cancels the caller's task. Both clients must end CancelledError."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from grpc_health.v1 import health_pb2

from nodecompat.server.h2.call import H2Options
from nodecompat.server.h2.unary import H2Channel
from nodecompat.server.h2.watch import H2Watch

HEALTH = "/grpc.health.v1.Health/Check"


async def _cancel_as_connect_fails(start: Callable[[], Awaitable[Any]]) -> BaseException | object:
    """Run start() in a task whose loop.create_connection is a future of ours; once the task waits on it, fail
    that future and cancel the task in one callback. What the task ended with: its exception, or its result."""
    loop = asyncio.get_running_loop()
    connect: asyncio.Future[Any] = loop.create_future()
    asked = asyncio.Event()

    async def create_connection(*_args: Any, **_kwargs: Any) -> Any:
        asked.set()
        return await connect

    loop.create_connection = create_connection  # type: ignore[method-assign]
    try:
        task = asyncio.ensure_future(start())
        await asked.wait()
        await asyncio.sleep(0)  # the task (and wait_for's inner task, before the fix) now wait on `connect`

        def both() -> None:
            connect.set_exception(ConnectionRefusedError(111, "Connection refused"))
            task.cancel()

        loop.call_soon(both)
        try:
            return await asyncio.wait_for(asyncio.shield(task), 5)
        except BaseException as exc:  # CancelledError is what must come out
            return exc
    finally:
        del loop.create_connection  # type: ignore[method-assign]  # the instance attribute; the class's again


def test_a_stream_cancelled_as_its_connect_is_refused_ends_cancelled() -> None:
    async def main() -> BaseException | object:
        watch = H2Watch("127.0.0.1:9", b"", H2Options())
        try:
            return await _cancel_as_connect_fails(watch.read)
        finally:
            await watch.close()

    out = asyncio.run(main())
    assert isinstance(out, asyncio.CancelledError), f"the cancelled stream ended {out!r}"


def test_a_unary_call_cancelled_as_its_connect_is_refused_ends_cancelled() -> None:
    async def main() -> BaseException | object:
        ch = H2Channel("127.0.0.1:9", H2Options())
        health = ch.unary_unary(HEALTH, health_pb2.HealthCheckRequest.SerializeToString,
                                health_pb2.HealthCheckResponse.FromString)
        try:
            return await _cancel_as_connect_fails(lambda: health(health_pb2.HealthCheckRequest(), timeout=5))
        finally:
            ch.close_now()

    out = asyncio.run(main())
    assert isinstance(out, asyncio.CancelledError), f"the cancelled call ended {out!r}"
