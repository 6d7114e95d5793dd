"""The lean client's unary calls (server/h2/unary.py, server/h2/mux.py) against hostile or unlucky peers, found in
review: a caller waiting for a stream slot that gives up (its deadline) must not swallow the slot another waiter
needs, and a node that floods SETTINGS frames and never reads must not grow our unread writes without end (its
ACKs queue as a PING flood's do). Real grpc.aio servers and real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Any

import grpc
import hpack
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


async def _flooded_until_closed(peer: SettingsFlood, transport: asyncio.BaseTransport, pending: asyncio.Future[Any],
                                what: str) -> None:
    """Fix our socket's send buffer small (the kernel then takes little of our writes), let `peer` flood, and check
    that `pending` ends UNAVAILABLE "does not read" and that the socket is really closed, our unread writes dropped
    (asyncio's close() alone waits for the peer to read them: for ever, the socket and ~66 KiB kept)."""
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.go.set()
    with pytest.raises(H2WatchError) as err:
        await pending
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert "does not read" in (err.value.details() or "")
    for _ in range(2000):
        if sock.fileno() == -1:
            break
        await asyncio.sleep(0.01)
    assert sock.fileno() == -1, f"the socket of a failed {what} is still open"


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
            await _flooded_until_closed(peer, ch.conn.transport, call, "connection")
        finally:
            await ch.close()
            peer.close()

    run(main())


class GoingAway:
    """A raw HTTP/2 peer allowing one stream at a time. Its first connection takes one call, sends GOAWAY naming it
    (last_stream_id 1) once `go_away` is set, and answers it once `release` is set; later connections answer every
    call. An answer's score: 100 x the connection's number + the stream id."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.release, self.go_away = threading.Event(), threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, len(self.conns)), daemon=True).start()

    @staticmethod
    def _frames(conn: socket.socket) -> Any:
        buf = b""
        while True:
            while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            n = int.from_bytes(buf[:3], "big")
            f, _ = hf.Frame.parse_frame_header(memoryview(buf[:9]))
            f.parse_body(memoryview(buf[9:9 + n]))
            buf = buf[9 + n:]
            yield f

    @staticmethod
    def _answer(conn: socket.socket, sid: int, score: int) -> None:
        enc = hpack.Encoder()
        enc.header_table_size = 0
        body = Resp(score=score).SerializeToString()
        conn.sendall(hf.HeadersFrame(sid, enc.encode([(":status", "200"), ("content-type", "application/grpc")]),
                                     flags=["END_HEADERS"]).serialize()
                     + hf.DataFrame(sid, b"\0" + len(body).to_bytes(4, "big") + body).serialize()
                     + hf.HeadersFrame(sid, enc.encode([("grpc-status", "0")]),
                                       flags=["END_HEADERS", "END_STREAM"]).serialize())

    def _serve(self, conn: socket.socket, k: int) -> None:
        with contextlib.suppress(OSError):
            conn.recv(24)  # the preface
            conn.sendall(hf.SettingsFrame(0, settings={hf.SettingsFrame.MAX_CONCURRENT_STREAMS: 1}).serialize())
            for f in self._frames(conn):
                if isinstance(f, hf.DataFrame) and "END_STREAM" in f.flags:
                    if k == 1:
                        self.go_away.wait(30)
                        conn.sendall(hf.GoAwayFrame(0, last_stream_id=f.stream_id).serialize())
                        self.release.wait(30)
                    self._answer(conn, f.stream_id, 100 * k + f.stream_id)

    def close(self) -> None:
        self.release.set()
        self.go_away.set()
        self.listener.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.close()


def test_a_call_waiting_for_a_slot_on_a_connection_going_away_goes_to_a_new_one() -> None:
    """The node allows one stream; A holds it; B waits for a slot; the node sends GOAWAY naming A (A may still end).
    B was never sent: it goes to a new connection at once and is answered there, as gRPC core moves a call it did not
    send (before: B waited on the old connection until A ended, here past B's deadline: DEADLINE_EXCEEDED)."""
    async def main() -> None:
        peer = GoingAway()
        ch = H2Channel(peer.address, H2Options())
        validate, _ = _methods(ch)
        try:
            a = asyncio.ensure_future(validate(Req(spec="A"), timeout=30))
            while ch.conn is None or not ch.conn.streams:
                await asyncio.sleep(0.01)
            first = ch.conn
            b = asyncio.ensure_future(validate(Req(spec="B"), timeout=5))
            while not first.slots:  # B waits for the one slot
                await asyncio.sleep(0.01)
            peer.go_away.set()
            assert (await b).score == 201  # the second connection's stream 1
            peer.release.set()
            assert (await a).score == 101  # the call the GOAWAY named ends on the first connection
        finally:
            await ch.close()
            peer.close()

    run(main())


def test_the_streams_client_drops_the_connection_of_a_node_that_never_reads() -> None:
    """The same for a WatchFeatures stream on the lean client (server/h2/watch.py, write bound 64 KiB): the call ends
    UNAVAILABLE and its socket is closed (before: left open for as long as the node does not read, once per
    resubscription)."""
    from nodecompat.server.h2.watch import H2Watch

    async def main() -> None:
        peer = SettingsFlood()
        call = H2Watch(peer.address, b"", H2Options())
        try:
            reader = asyncio.ensure_future(call.read())
            while call.transport is None or not call.settings_seen:
                await asyncio.sleep(0.01)
            await _flooded_until_closed(peer, call.transport, reader, "stream")
        finally:
            await call.close()
            peer.close()

    run(main())
