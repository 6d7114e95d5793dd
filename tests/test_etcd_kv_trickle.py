"""An etcd endpoint that sends its answer's body a byte at a time, each byte within the read timeout
(server/inventory/etcd_kv.py _post_bounded: "the whole call (connect, status line, headers, body) ends within
CALL_TIMEOUT however slowly the peer sends"; nodecompat/oci/deadline.py). A read of one 64 KiB part used to wait
for all of it, and requests' post() waited for the whole head, so such a peer held a store call (a
registration, a lease keepalive, the inventory's prefix load) for hours. Real sockets on loopback.

The store is made with a 1.5 s call deadline (EtcdEndpoints(call_timeout=...); the product's is CALL_TIMEOUT,
5 s): the bound is the same code path, the trickle (a byte every 0.2 s) stays well inside each read's timeout.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from nodecompat.server.inventory.etcd_kv import EtcdEndpoints
from nodecompat.server.inventory.registration_store import StoreUnavailable

CALL_DEADLINE = 1.5  # s: the store's call_timeout here (CALL_TIMEOUT, 5 s, in the product)


class TrickleGateway:
    """Answers every request with prompt headers (200, a 100,000-byte body, by length or chunked) and then
    one byte of body every `interval` s: ~a day to send it all."""

    def __init__(self, chunked: bool, interval: float = 0.2, head: bool = False) -> None:
        self.chunked = chunked
        self.head = head  # trickle the status line and headers instead: no response to close exists yet
        self.interval = interval
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = ("127.0.0.1", self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(1 << 16)
                if self.head:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")  # a header line that never ends
                elif self.chunked:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n186a0\r\n")
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 100000\r\n\r\n")
                while not self.stop.is_set():
                    conn.sendall(b" ")
                    time.sleep(self.interval)
            except OSError:  # the client hung up
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize(("chunked", "head"), [(False, False), (True, False), (False, True)],
                         ids=["body-by-length", "body-chunked", "status-and-headers"])
def test_a_trickled_answer_ends_the_call_at_its_deadline(chunked: bool, head: bool) -> None:
    gw = TrickleGateway(chunked, head=head)
    store = EtcdEndpoints([gw.address], call_timeout=CALL_DEADLINE)
    got: list[BaseException | object] = []

    def load() -> None:
        try:
            got.append(store.range_prefix("/p/"))
        except BaseException as exc:
            got.append(exc)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        t.join(120)  # the call's deadline is 1.5 s; sending the whole answer would take ~5.5 hours
        assert not t.is_alive(), "the store call is still reading the trickled answer"
        assert isinstance(got[0], StoreUnavailable), got
        assert f"not complete within {CALL_DEADLINE}s" in str(got[0])
    finally:
        gw.close()


def test_a_watch_whose_head_trickles_is_given_up_within_a_calls_deadline() -> None:
    # PrefixWatch's stream is long-lived, but the answer's head must come within a call's deadline.
    from nodecompat.server.inventory.etcd_kv import PrefixWatch

    gw = TrickleGateway(False, head=True)
    store = EtcdEndpoints([gw.address], call_timeout=CALL_DEADLINE)
    watch = PrefixWatch(store, "/p/", lambda kvs: None, lambda k, v, d: None)
    got: list[BaseException] = []

    def once() -> None:
        try:
            watch._watch_once(store.clients[0], 1)
        except BaseException as exc:
            got.append(exc)

    t = threading.Thread(target=once, daemon=True)
    started = time.monotonic()
    t.start()
    try:
        t.join(120)
        assert not t.is_alive(), "the watch is still waiting for the trickled head"
        assert got, "the watch returned as if etcd had answered"
        assert time.monotonic() - started < CALL_DEADLINE + 10
    finally:
        gw.close()
