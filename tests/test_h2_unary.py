"""The lean client's unary calls (server/h2/unary.py, the fan-out's --fanout-transport h2) against real grpc.aio
servers on real ports: calls multiplexed on one connection, the node's stream limit, deadlines the node cannot
stretch (while connecting and while answering), the receive bound, status codes and messages from the trailers,
cancellation, and a new connection after the node went away. The fan-out's guarantees with this transport are
tests/test_fleet.py, test_fleet_batches.py and test_fleet_tls.py (parametrized with both transports)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from nodecompat.server.h2.call import H2Options, H2WatchError
from nodecompat.server.h2.unary import H2Channel
from nodecompat.v1 import node_pb2

VALIDATE = "/nodecompat.v1.NodeService/ValidateImage"
HEALTH = "/grpc.health.v1.Health/Check"
Req, Resp = node_pb2.ValidateImageRequest, node_pb2.ValidateImageResponse


class Node:
    """A grpc.aio server with ValidateImage and Health/Check handlers given per test; peers seen per call."""

    def __init__(self, validate: Callable[[Any, Any], Awaitable[Any]], options: list[tuple[str, Any]] | None = None):
        self.validate, self.options = validate, options or []
        self.peers: list[str] = []
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> str:
        async def validate(request: Any, context: Any) -> Any:
            self.peers.append(context.peer())
            return await self.validate(request, context)

        async def check(request: Any, context: Any) -> Any:
            self.peers.append(context.peer())
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

        handlers = {
            "ValidateImage": grpc.unary_unary_rpc_method_handler(
                validate, request_deserializer=Req.FromString, response_serializer=Resp.SerializeToString),
        }
        health = {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString),
        }
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *self.options])
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("nodecompat.v1.NodeService",
                                                                                   handlers),
                                              grpc.method_handlers_generic_handler("grpc.health.v1.Health", health)])
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()
        return f"127.0.0.1:{self.port}"


async def _ok(request: Any, context: Any) -> Any:
    return Resp(compatible=True, score=len(request.spec))


def _methods(ch: H2Channel) -> tuple[Any, Any]:
    validate = ch.unary_unary(VALIDATE, Req.SerializeToString, Resp.FromString)
    health = ch.unary_unary(HEALTH, health_pb2.HealthCheckRequest.SerializeToString,
                            health_pb2.HealthCheckResponse.FromString)
    return validate, health


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def test_calls_share_one_connection_several_at_once() -> None:
    """A ValidateImage held by the node until a Health/Check arrives on the same connection: both answer."""
    async def main() -> None:
        checked = asyncio.Event()

        async def held(request: Any, context: Any) -> Any:
            await asyncio.wait_for(checked.wait(), 10)
            return Resp(compatible=True, score=len(request.spec))

        node = Node(held)
        address = await node.start()
        orig = node.server
        assert orig is not None
        ch = H2Channel(address, H2Options())
        validate, health = _methods(ch)
        try:
            first = asyncio.ensure_future(validate(Req(spec="x" * 100_000), timeout=20))  # past one 64 KiB window
            while len(node.peers) < 1:
                await asyncio.sleep(0.01)
            answer = await health(health_pb2.HealthCheckRequest(), timeout=5)
            checked.set()
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            assert (await first).score == 100_000
            for i in range(20):  # and many at once, answered in any order
                got = await asyncio.gather(*(validate(Req(spec="y" * j), timeout=10) for j in range(i, i + 8)))
                assert [r.score for r in got] == list(range(i, i + 8))
            assert len(set(node.peers)) == 1  # one TCP connection for all of it
        finally:
            await ch.close()
            await orig.stop(0)

    run(main())


def test_the_nodes_stream_limit_queues_calls_within_their_deadline() -> None:
    async def main() -> None:
        async def slow(request: Any, context: Any) -> Any:
            await asyncio.sleep(0.05)
            return Resp(score=int(request.spec))

        node = Node(slow, [("grpc.max_concurrent_streams", 1)])
        address = await node.start()
        ch = H2Channel(address, H2Options())
        validate, _ = _methods(ch)
        try:
            got = await asyncio.gather(*(validate(Req(spec=str(i)), timeout=20) for i in range(6)))
            assert [r.score for r in got] == list(range(6))
        finally:
            await ch.close()
            assert node.server is not None
            await node.server.stop(0)

    run(main())


def test_deadlines_hold_against_a_node_that_never_answers_or_never_speaks() -> None:
    async def main() -> None:
        async def never(request: Any, context: Any) -> Any:
            await asyncio.sleep(3600)

        node = Node(never)
        address = await node.start()
        silent = socket.socket()  # accepts TCP, never sends SETTINGS
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        try:
            for target in (address, f"127.0.0.1:{silent.getsockname()[1]}"):
                ch = H2Channel(target, H2Options())
                validate, _ = _methods(ch)
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(H2WatchError) as err:
                    await validate(Req(spec="x"), timeout=0.5)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (target, err.value)
                assert loop.time() - started < 30  # bounded by the call's deadline (a wide margin: no timing claim)
                await ch.close()
        finally:
            silent.close()
            assert node.server is not None
            await node.server.stop(0)

    run(main())


@pytest.mark.parametrize(("abort", "code", "details"), [
    (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND, "no such image: a b%c é"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.RESOURCE_EXHAUSTED, "too big"),
])
def test_trailers_give_the_status_and_message(abort: grpc.StatusCode, code: grpc.StatusCode, details: str) -> None:
    async def main() -> None:
        async def failing(request: Any, context: Any) -> Any:
            await context.abort(abort, details)

        node = Node(failing)
        address = await node.start()
        ch = H2Channel(address, H2Options())
        validate, health = _methods(ch)
        try:
            with pytest.raises(H2WatchError) as err:
                await validate(Req(spec="x"), timeout=5)
            assert (err.value.code(), err.value.details()) == (code, details)
            assert (await health(health_pb2.HealthCheckRequest(), timeout=5)).status == 1  # the connection lives on
        finally:
            await ch.close()
            assert node.server is not None
            await node.server.stop(0)

    run(main())


def test_an_answer_over_the_receive_bound_is_refused_and_a_request_over_it_never_sent() -> None:
    async def main() -> None:
        async def big(request: Any, context: Any) -> Any:
            return Resp(report={"node_name": "n" * 5000})

        node = Node(big)
        address = await node.start()
        ch = H2Channel(address, H2Options(max_message=1000))
        validate, _ = _methods(ch)
        try:
            with pytest.raises(H2WatchError) as err:
                await validate(Req(spec="x"), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in err.value.details()
            with pytest.raises(H2WatchError) as sent:
                await validate(Req(spec="x" * 2000), timeout=5)
            assert sent.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len(node.peers) == 1  # the second never reached the node
        finally:
            await ch.close()
            assert node.server is not None
            await node.server.stop(0)

    run(main())


def test_a_cancelled_call_resets_its_stream_and_the_connection_goes_on() -> None:
    async def main() -> None:
        cancelled = asyncio.Event()

        async def wait(request: Any, context: Any) -> Any:
            if request.spec == "hold":
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    cancelled.set()
                    raise
            return Resp(score=1)

        node = Node(wait)
        address = await node.start()
        ch = H2Channel(address, H2Options())
        validate, _ = _methods(ch)
        try:
            task = asyncio.ensure_future(validate(Req(spec="hold"), timeout=60))
            while not node.peers:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(cancelled.wait(), 10)  # the node saw the RST_STREAM
            assert (await validate(Req(spec="go"), timeout=5)).score == 1
            assert len(set(node.peers)) == 1
        finally:
            await ch.close()
            assert node.server is not None
            await node.server.stop(0)

    run(main())


def test_a_node_that_went_away_is_reached_again_on_a_new_connection() -> None:
    async def main() -> None:
        node = Node(_ok)
        address = await node.start()
        ch = H2Channel(address, H2Options())
        validate, _ = _methods(ch)
        try:
            assert (await validate(Req(spec="ab"), timeout=5)).score == 2
            assert node.server is not None
            await node.server.stop(0)
            for _ in range(200):  # the node's GOAWAY and close reach us: bounded wait
                if ch.closed():
                    break
                await asyncio.sleep(0.02)
            assert ch.closed()
            again = Node(_ok)
            await again.start(node.port)
            try:
                assert (await validate(Req(spec="abc"), timeout=5)).score == 3
            finally:
                assert again.server is not None
                await again.server.stop(0)
        finally:
            await ch.close()

    run(main())


def test_a_node_that_sends_pings_and_never_reads_loses_its_connection() -> None:
    """Each PING is answered; a peer that floods PINGs and never reads (a tiny receive buffer, nothing read)
    would grow our unread writes without end: past max_message + 64 KiB the connection ends, UNAVAILABLE.
    Our socket's send buffer is fixed small once connected (as test_h2_unary_hostile's SETTINGS flood): the kernel
    would otherwise take up to tcp_wmem's 4 MiB of PING ACKs first, ~250,000 PINGs parsed before our own buffer
    grows at all (~25 s of the suite at load 8, for the same assertion)."""
    import threading

    from hyperframe import frame as hf

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    stop, go = threading.Event(), threading.Event()
    accepted: list[socket.socket] = []

    def flood() -> None:
        conn, _ = srv.accept()
        accepted.append(conn)
        pings = hf.PingFrame(0, b"12345678").serialize() * 256
        sent = 0
        try:
            conn.sendall(hf.SettingsFrame(0).serialize())
            go.wait(30)
            while not stop.is_set() and sent < 50_000_000:  # bounded: the test fails, it does not hang
                conn.sendall(pings)
                sent += len(pings)
        except OSError:
            pass
        finally:
            conn.close()

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()

    async def main() -> None:
        ch = H2Channel(f"127.0.0.1:{srv.getsockname()[1]}", H2Options(max_message=1000))
        validate, _ = _methods(ch)
        try:
            call = asyncio.ensure_future(validate(Req(spec="x"), timeout=50))
            while ch.conn is None or not ch.conn.ready.done():
                await asyncio.sleep(0.01)
            assert ch.conn.transport is not None
            ch.conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            go.set()
            with pytest.raises(H2WatchError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "does not read what it is sent" in err.value.details()
        finally:
            go.set()
            await ch.close()

    try:
        run(main())
    finally:
        stop.set()
        go.set()
        for conn in accepted:  # our side closes its failed connection a second or two later (asyncio's close):
            with contextlib.suppress(OSError):  # end the flooder's blocked sendall now, not at the join's bound
                conn.shutdown(socket.SHUT_RDWR)
        flooder.join(10)
        srv.close()
