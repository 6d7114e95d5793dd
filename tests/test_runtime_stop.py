"""server/runtime/runtime.py's stop: a stream still open when the server stops (its caller gone, or cut by the
shutdown) ends its handler on the event loop before the loop stops — its finally blocks run, so what they
end (an OpenTelemetry span, a watcher's slot) is ended and exported. gRPC core reports the server shut down
as soon as its calls are over, while the Python tasks of those calls may not have run their cancellation
yet (grpc/_cython/_cygrpc/aio/server.pyx.pxi AioServer.shutdown); a real grpc.aio Runtime on a real port."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc

from nodecompat.server.runtime.runtime import Runtime, RuntimeLimits
from nodecompat.v1 import inventory_pb2


class _Servicer:
    def __init__(self) -> None:
        self.started = threading.Event()
        self.ended = threading.Event()

    def GetFeatures(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    def ValidateImage(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    async def WatchFeatures(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.started.set()
        try:
            await asyncio.Event().wait()  # a watch with nothing to say: only a cancel ends it
            yield inventory_pb2.WatchFeaturesResponse()
        finally:
            await asyncio.sleep(0.2)  # clean-up that needs the loop (e.g. writing the stream's last record)
            self.ended.set()


def _serve() -> tuple[_Servicer, Runtime, str]:
    from nodecompat.v1 import node_pb2

    servicer = _Servicer()
    rt = Runtime("stop-test", RuntimeLimits(workers=1, max_concurrent_calls=4, request_timeout=2.0), [])
    service = node_pb2.DESCRIPTOR.services_by_name["NodeService"]
    rt.add_servicer(servicer, service)
    port = rt.bind("127.0.0.1:0", None)
    rt.start()
    return servicer, rt, f"127.0.0.1:{port}"


def _open_stream(address: str) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(address)
    call = channel.unary_stream("/nodecompat.v1.NodeService/WatchFeatures")(
        inventory_pb2.WatchFeaturesRequest().SerializeToString(), timeout=30)
    return channel, call


def test_a_stream_cut_by_the_shutdown_ends_its_handler_before_stop_returns() -> None:
    servicer, rt, address = _serve()
    channel, call = _open_stream(address)
    try:
        assert servicer.started.wait(10)
        rt.stop(0.1)  # grace ends, core cancels the call: the handler's task must still run its finally
        assert servicer.ended.is_set(), "the handler's finally never ran: the loop stopped first"
    finally:
        call.cancel()
        channel.close()


def test_a_stream_its_caller_left_just_before_the_shutdown_ends_its_handler() -> None:
    for _ in range(3):  # the race is between the caller's cancel and the shutdown: a few rounds
        servicer, rt, address = _serve()
        channel, call = _open_stream(address)
        try:
            assert servicer.started.wait(10)
            call.cancel()
            rt.stop(5.0)
            assert servicer.ended.is_set(), "the handler's finally never ran: the loop stopped first"
        finally:
            channel.close()


def test_stop_waits_for_the_calls_tasks_only() -> None:
    """A task of the application's own on the loop (e.g. a channel pool's sweep) is neither waited for nor
    cancelled by stop: it stays as it was, as before stop ended the calls' tasks."""
    servicer, rt, address = _serve()
    ended = threading.Event()
    never = asyncio.Event()  # held here: it keeps the waiting task alive (else the cyclic collector may close it)

    async def background() -> None:
        try:
            await never.wait()
        finally:
            ended.set()

    rt.soon(background())
    channel, call = _open_stream(address)
    try:
        assert servicer.started.wait(10)
        rt.stop(0.1)
        assert servicer.ended.is_set()
        gc.collect()
        assert not ended.is_set(), "stop cancelled a task that is not a call's"
    finally:
        call.cancel()
        channel.close()
