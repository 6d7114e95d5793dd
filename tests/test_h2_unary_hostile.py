"""The lean client's unary calls (server/h2/unary.py, server/h2/mux.py) against hostile or unlucky peers, found in
review: a caller waiting for a stream slot that gives up (its deadline) must not swallow the slot another waiter
needs, and a node that floods SETTINGS frames and never reads must not grow our unread writes without end (its
ACKs queue as a PING flood's do). Real grpc.aio servers and real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import grpc
import pytest
from hyperframe import frame as hf
from test_h2_unary import Node, Req, Resp, _methods, run

from nodecompat.server.h2.call import H2Options, H2WatchError
from nodecompat.server.h2.unary import H2Channel


def test_a_slot_waiter_that_gives_up_does_not_swallow_the_next_waiters_slot() -> None:
    """Node limit 1 stream: call A holds it; B waits for a slot and passes its deadline; C waits with a long one.
    When A ends, C gets the slot (before: the freed slot went to B's abandoned waiter, C waited to its deadline)."""
    async def main() -> None:
        release = asyncio.Event()

        async def held(request: Any, context: Any) -> Any:
            if request.spec == "A":
                await asyncio.wait_for(release.wait(), 30)
            return Resp(compatible=True, score=len(request.spec))

        node = Node(held, [("grpc.max_concurrent_streams", 1)])
        address = await node.start()
        ch = H2Channel(address, H2Options())
        validate, _ = _methods(ch)
        try:
            a = asyncio.ensure_future(validate(Req(spec="A"), timeout=30))
            while not node.peers:  # A is at the node, holding its one stream
                await asyncio.sleep(0.01)
            assert ch.conn is not None and ch.conn.peer_max == 1
            b = asyncio.ensure_future(validate(Req(spec="BB"), timeout=0.3))
            await asyncio.sleep(0)
            c = asyncio.ensure_future(validate(Req(spec="CCC"), timeout=8))
            with pytest.raises(H2WatchError) as err:
                await b
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            release.set()
            assert (await a).score == 1
            assert (await c).score == 3  # before the fix: DEADLINE_EXCEEDED after 8 s on an idle connection
        finally:
            await ch.close()
            assert node.server is not None
            await node.server.stop(0)

    run(main())


class SettingsFlood:
    """A TCP peer that answers the preface with SETTINGS, then (once told) sends SETTINGS frames without end and
    never reads: every one asks for an ACK."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited: little kernel room
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.go, self.stop = threading.Event(), threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(30)
            conn.sendall(hf.SettingsFrame(0).serialize())
            self.go.wait(30)
            batch = hf.SettingsFrame(0).serialize() * 1000
            try:
                while not self.stop.is_set():
                    conn.sendall(batch)
                    self.sent += 1000
            except OSError:  # the client dropped the connection
                pass

    def close(self) -> None:
        self.stop.set()
        self.go.set()
        self.listener.close()
        self.thread.join(30)


def test_a_node_that_floods_settings_and_never_reads_ends_its_connection() -> None:
    """Each SETTINGS is ACKed; a node that never reads ours would grow the transport's buffer without end. The call
    ends UNAVAILABLE ("does not read") once our unread writes pass max_message + 64 KiB, before its deadline
    (before the fix: DEADLINE_EXCEEDED, the buffer grown by 9 bytes a SETTINGS frame all along)."""
    async def main() -> None:
        peer = SettingsFlood()
        ch = H2Channel(peer.address, H2Options(max_message=1024))
        validate, _ = _methods(ch)
        try:
            call = asyncio.ensure_future(validate(Req(spec="x"), timeout=15))
            while ch.conn is None or not ch.conn.ready.done():
                await asyncio.sleep(0.01)
            assert ch.conn.transport is not None
            sock = ch.conn.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # fixed: the kernel takes little of ours
            peer.go.set()
            with pytest.raises(H2WatchError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "does not read" in (err.value.details() or "")
        finally:
            await ch.close()
            peer.close()

    run(main())
