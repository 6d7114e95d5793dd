"""Registry sockets end by the operation's deadline, whatever the peer does.

A socket timeout bounds each read, not the whole exchange: a registry that trickles its headers or body
one byte per second never trips it, and a budget checked between 64 KiB chunks is never reached. So
every socket a registry operation opens or reuses is registered with that operation's deadline, and one
watchdog thread shuts the socket down (shutdown(2) on its file descriptor, which wakes a blocked read,
TLS included) when the deadline passes; the read then fails and the transport reports
DEADLINE_EXCEEDED. Hand-written because neither requests nor urllib3 has a total (wall-clock) deadline:
urllib3's Timeout(total=...) is still applied per socket operation.

How sockets are found: sessions from `watched_session()` use urllib3 connection classes that register
their socket with the deadline active on the calling thread (`deadline_scope`) when they connect and
each time they send a request on a kept-alive connection. A socket belongs to the last operation that
used it, so an earlier operation's deadline never cuts a later one's exchange; a socket shut down while
idle in the pool is seen as dropped by urllib3 and replaced.

Also used by the aggregator's etcd client (server/inventory/etcd_kv.py) for the same reason; a long-lived stream
whose head came in time is `release`d from its deadline.
"""

from __future__ import annotations

import _socket
import contextlib
import heapq
import itertools
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_local = threading.local()


class Deadline:
    """A monotonic deadline whose sockets are shut down when it passes (see the module docstring)."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.fired = False
        self._socks: list[weakref.ref[socket.socket]] = []
        self._scheduled = False

    def watch(self, sock: socket.socket) -> None:
        """Make `sock` this deadline's: shut down when the deadline passes (at once if it has)."""
        _WATCHDOG.claim(self, sock)


class _Watchdog:
    """One daemon thread for all deadlines: a heap of (deadline, seq, Deadline)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._owner: weakref.WeakKeyDictionary[socket.socket, Deadline] = weakref.WeakKeyDictionary()
        self._thread: threading.Thread | None = None

    def claim(self, deadline: Deadline, sock: socket.socket) -> None:
        with self._cond:
            self._owner[sock] = deadline
            deadline._socks.append(weakref.ref(sock))
            if len(deadline._socks) > 64:  # an operation with many requests: forget dead sockets
                deadline._socks = [r for r in deadline._socks if r() is not None]
            expired = time.monotonic() >= deadline.at
            if not expired and not deadline._scheduled:
                deadline._scheduled = True
                heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="registry-deadline", daemon=True)
                    self._thread.start()
                self._cond.notify()
        if expired:
            self._fire(deadline)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                _, _, deadline = heapq.heappop(self._heap)
            self._fire(deadline)

    def _fire(self, deadline: Deadline) -> None:
        with self._cond:
            deadline.fired = True
            mine = [s for s in (r() for r in deadline._socks) if s is not None and self._owner.get(s) is deadline]
            deadline._socks = []
        for s in mine:
            with contextlib.suppress(OSError):  # already closed
                _socket.socket.shutdown(s, socket.SHUT_RDWR)  # the fd itself, also under an SSLSocket


_WATCHDOG = _Watchdog()


@contextmanager
def deadline_scope(deadline: Deadline) -> Iterator[None]:
    """Sockets that watched sessions connect or reuse on this thread meanwhile belong to `deadline`."""
    previous = getattr(_local, "deadline", None)
    _local.deadline = deadline
    try:
        yield
    finally:
        _local.deadline = previous


def release(sock: socket.socket | None) -> None:
    """`sock` belongs to no deadline any more (a stream whose head came in time, read with its own bounds)."""
    if sock is not None:
        with _WATCHDOG._cond:
            _WATCHDOG._owner.pop(sock, None)


def _register(sock: Any) -> None:
    deadline: Deadline | None = getattr(_local, "deadline", None)
    if deadline is not None and isinstance(sock, socket.socket):
        deadline.watch(sock)


class _WatchedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _register(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _register(sock)  # before the TLS handshake, which a peer can trickle too
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def watched_session() -> requests.Session:
    """A requests.Session whose sockets obey the deadline_scope they are used in."""
    sess = requests.Session()
    adapter = _WatchedAdapter()
    sess.mount("http://", adapter)
    sess.mount("https://", adapter)
    return sess
