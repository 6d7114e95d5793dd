"""An empty call (Health/Check) on a nodecompat server with tracing off does the same Python work as on a
bare grpc.aio server with grpcio-health-checking's servicer (issue 11: the empty-RPC ratio >= 0.97).

Counted, not timed: cProfile on each server's event-loop thread over the same number of calls counts the
Python function calls per Check, leaving out the event loop's own machinery (asyncio, selectors and C builtins):
how many loop iterations and self-pipe wake-ups 500 calls take depends on thread timing, not on the server (the
loop-inclusive count swung by +-4 calls per Check between runs on a loaded CI machine, either way, on both
servers; the count without it is 23.04 on both, stable to 0.01). The cyclic collector is off while counting:
finalizers of other threads' garbage run on the thread that triggers a collection. No interceptor, no context
wrapper, no extra registered method (grpc.aio awaits a pending request per registered method for every call it
accepts: grpc's src/python/grpcio/grpc/_cython/_cygrpc/aio/server.pyx.pxi, AioServer._server_main_loop).
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import pstats
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from support_hosts import fixture_host

from nodecompat.server.node.daemon import DaemonConfig, NodeDaemon

CALLS = 500


def _calls_per_check(port: int, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> float:
    """Python function calls on the server's loop thread per Health/Check (after a warm-up)."""
    prof = cProfile.Profile()

    async def on() -> None:
        prof.enable()

    async def off() -> None:
        prof.disable()

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        req = health_pb2.HealthCheckRequest()
        deadline = time.monotonic() + 30  # the first round's hooks set SERVING just after it is stored
        while stub.Check(req, timeout=10).status != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "SERVING within 30 s"
            time.sleep(0.01)
        for _ in range(100):
            stub.Check(req, timeout=10)
        gc.collect()  # cyclic garbage of earlier work (probe rounds) would be finalized on whichever thread
        gc.disable()  # triggers the next collection, the loop's included (root_resolve's _close_all seen there)
        try:
            run(on())
            for _ in range(CALLS):
                stub.Check(req, timeout=10)
            run(off())
        finally:
            gc.enable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    return sum(v[1] for k, v in stats.items() if not _loop_machinery(k[0])) / CALLS


def _loop_machinery(filename: str) -> bool:
    """True for the event loop's own frames, whose count follows thread timing (see the module docstring)."""
    return filename == "~" or "/asyncio/" in filename or filename.endswith("/selectors.py")


@pytest.fixture
def bare() -> Iterator[tuple[int, Callable[[Coroutine[Any, Any, Any]], Any]]]:
    """The bench's bare server (bench/bench_daemon.py BARE_SERVER), on its own loop thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    async def make() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        h = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(h, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await h.set("", health_pb2.HealthCheckResponse.SERVING)
        return server, port

    server, port = run(make())
    yield port, run
    run(server.stop(None))
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_an_empty_call_does_the_python_work_of_a_bare_server(bare, monkeypatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    d = NodeDaemon(DaemonConfig(listen="127.0.0.1:0", host_root=str(fixture_host("h100-server").root), hotplug=False))
    port = d.start()
    try:
        assert d.cache.current(timeout=30) is not None
        ours = _calls_per_check(port, d.runtime.call)
        theirs = _calls_per_check(*bare)
    finally:
        d.stop(grace=0)
    assert theirs > 10  # the count is real: grpc.aio's own Python work per call (23 on grpcio 1.6x)
    assert ours <= theirs + 0.5, f"{ours:.1f} Python calls per Check on nodecompat, {theirs:.1f} on a bare server"
