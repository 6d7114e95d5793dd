"""Hostile resets of WatchFeatures streams against the real node daemon (server/node/daemon.py in-process, a real
port, real probes on a fixture host): a raw HTTP/2 peer resets its streams in every order (RST_STREAM CANCEL after
END_STREAM, before it, then GOAWAY, then a TCP close; a TCP close with streams open; a close in the middle of a
frame; flow-control windows of 0 so the daemon's writes are pending), and grpc.aio's own client cancels. After each,
the hub's watcher count (the MAX_WATCHERS bound) is back to 0, Health answers, and stop(grace) returns.

And the one cause found on our side: the watcher's wait was asyncio.wait_for, whose Python 3.11 version drops a
cancellation that lands in the same loop iteration as the wake-up it waits for (CPython gh-86296): a client's reset
(grpc.aio cancels the call's task) landing with a probe round's wake-up left the handler running, holding its
watcher slot until its next write failed, up to the heartbeat (300 s at most).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import hpack
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hyperframe import frame as hf
from support_etcd import wait_for
from support_hosts import copy_fixture

from nodecompat.server.node.daemon import DaemonConfig, NodeDaemon
from nodecompat.server.node.feature_watch import FeatureWatchHub, _Watcher
from nodecompat.v1 import inventory_pb2, node_pb2_grpc

STREAMS = 8
HEADERS = [(":method", "POST"), (":scheme", "http"), (":path", "/nodecompat.v1.NodeService/WatchFeatures"),
           (":authority", "node"), ("content-type", "application/grpc"), ("te", "trailers")]  # fmt: skip


def test_a_reset_landing_with_a_rounds_wake_up_still_ends_the_watcher() -> None:
    """The wake-up (a round: event set) and the task's cancellation (the client's reset) in one loop iteration:
    the wait raises CancelledError. Before (asyncio.wait_for on Python 3.11) it returned True, cancellation lost."""

    async def main() -> str:
        w = _Watcher(asyncio.get_running_loop())
        task = asyncio.ensure_future(FeatureWatchHub._wait(w, 300.0))
        await asyncio.sleep(0.01)
        w.event.set()
        task.cancel()
        try:
            return f"returned {await task}"
        except asyncio.CancelledError:
            return "cancelled"

    assert asyncio.run(main()) == "cancelled"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[NodeDaemon]:
    host = copy_fixture("h100-server", tmp_path)
    d = NodeDaemon(DaemonConfig(listen="127.0.0.1:0", host_root=str(host.root), node_name="n1", hotplug=False))
    d.start()
    try:
        assert d.cache.current(timeout=60) is not None
        yield d
    finally:
        d.stop(0)


def _request(once: bool = False) -> bytes:
    raw = inventory_pb2.WatchFeaturesRequest(heartbeat_seconds=300, once=once).SerializeToString()
    return b"\0" + struct.pack(">I", len(raw)) + raw


def _drain(s: socket.socket, seconds: float) -> None:
    s.settimeout(seconds)
    try:
        while s.recv(1 << 20):
            pass
    except OSError:
        pass


def _hostile(port: int, order: str, window: int) -> None:
    """One connection, STREAMS WatchFeatures calls, then ended as `order` says."""
    s = socket.create_connection(("127.0.0.1", port))
    enc = hpack.Encoder()
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
              + hf.SettingsFrame(0, settings={hf.SettingsFrame.INITIAL_WINDOW_SIZE: window}).serialize()
              + hf.SettingsFrame(0, flags=["ACK"]).serialize())  # fmt: skip
    ids = list(range(1, 2 * STREAMS, 2))
    out = b""
    for sid in ids:
        out += hf.HeadersFrame(sid, data=enc.encode(HEADERS), flags=["END_HEADERS"]).serialize()
        if order != "rst-before-end-stream":
            out += hf.DataFrame(sid, data=_request(once=sid % 4 == 1), flags=["END_STREAM"]).serialize()
    s.sendall(out)
    _drain(s, 0.3)
    out = b""
    if order.startswith("rst"):
        out += b"".join(hf.RstStreamFrame(sid, error_code=8).serialize() for sid in ids)  # CANCEL
    if order == "rst-goaway-close":
        out += hf.GoAwayFrame(0, last_stream_id=0, error_code=0).serialize()
    if order == "close-mid-frame":
        out += hf.HeadersFrame(2 * STREAMS + 1, data=enc.encode(HEADERS), flags=["END_HEADERS"]).serialize()[:-3]
    if out:
        s.sendall(out)
    if order in ("rst-after-end-stream", "rst-before-end-stream"):
        _drain(s, 0.3)  # the connection stays up: the streams alone are gone
    s.close()


def _health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return int(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status)


def test_hostile_resets_release_every_watcher_and_health_and_stop_answer(daemon: NodeDaemon) -> None:
    """Every reset order, with open and with zero flow-control windows (the daemon's writes then pending): the
    hub's watchers go back to 0 (heartbeat 300 s, so a handler that missed its cancellation would still hold its
    slot), Health is SERVING, and stop(grace) returns (the fixture's stop(0) after a stop(1) here is a no-op)."""
    hub = daemon.watch_hub()
    for window in (1 << 20, 0):
        for order in ("rst-after-end-stream", "rst-before-end-stream", "rst-goaway-close", "rst-close", "close",
                      "close-mid-frame"):  # fmt: skip
            _hostile(daemon.port, order, window)
            wait_for(f"{order} (window {window}): every watcher released", lambda: hub.watchers() == 0, 30)
    assert _health(daemon.port) == health_pb2.HealthCheckResponse.SERVING

    async def cancels() -> None:  # grpc.aio's own client: cancelled before, during and after the first message
        async with grpc.aio.insecure_channel(f"127.0.0.1:{daemon.port}") as ch:
            stub = node_pb2_grpc.NodeServiceStub(ch)
            for delay in (0.0, 0.005, 0.05, 0.5):
                calls = [stub.WatchFeatures(inventory_pb2.WatchFeaturesRequest(heartbeat_seconds=300))
                         for _ in range(STREAMS)]  # fmt: skip
                await asyncio.sleep(delay)
                for c in calls:
                    c.cancel()

    asyncio.run(cancels())
    wait_for("grpc.aio cancels: every watcher released", lambda: hub.watchers() == 0, 30)
    assert _health(daemon.port) == health_pb2.HealthCheckResponse.SERVING
    _hostile(daemon.port, "rst-after-end-stream", 0)  # streams reset just before stop
    stopper = threading.Thread(target=daemon.stop, args=(1.0,), daemon=True)
    stopper.start()
    stopper.join(60)
    assert not stopper.is_alive(), "stop(1.0) did not return"
