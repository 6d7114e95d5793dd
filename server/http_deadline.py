"""HTTP calls (requests) that end at an absolute deadline whatever the peer sends: connect, TLS handshake,
request body, status line, headers and body alike.

requests and urllib3 only know per-receive timeouts: a peer that sends one byte of its status line or
headers every second keeps `session.post()` blocked for as long as it likes (http.client accepts up to 100
header lines of 64 KiB each), before the caller holds a response it could close. So every connection of a
session built with `deadline_session()` notes itself, while it connects, sends and waits for the answer's
head, in the calling thread's current `within()` call; when that call's deadline passes, a timer shuts the
socket down (shutdown(2) wakes the blocked receive with end-of-file: urllib3/requests raise, the caller maps
that to "not complete within"). Reading a streamed body inside the same `within()` block is covered too (the
connection stays the noted one).

Hand-written because no maintained client offers a whole-call deadline on a blocking requests session (urllib3's
Timeout(total=) bounds only the connect plus the *start* of each read; psf/requests#3099); it uses public
extension points only: HTTPAdapter.init_poolmanager, PoolManager.pool_classes_by_scheme, and
HTTPConnectionPool.ConnectionCls.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class CallDeadlineExceeded(TimeoutError):
    """A within() block's deadline passed: what its calls read may be cut short (a header block ended by the
    shutdown even parses as complete), so nothing read in the block may be used."""


_current = threading.local()  # .call: the _Call of this thread's within() block, or None


class _Call:
    """One within() block: the connection it uses (noted by the connection itself) and whether it expired."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: HTTPConnection | None = None
        self.expired = False

    def note(self, conn: HTTPConnection) -> None:
        with self.lock:
            self.conn = conn
            expired = self.expired
        if expired:  # past the deadline before this step began: end it at once
            _shut(conn)

    def expire(self) -> None:
        with self.lock:
            self.expired = True
            conn = self.conn
        if conn is not None:
            _shut(conn)


def _shut(conn: HTTPConnection) -> None:
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    # the plain socket's shutdown also for TLS: SSLSocket.shutdown would drop its SSL object under a reader;
    # OSError: already closed or never connected
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _note(conn: HTTPConnection) -> None:
    call: _Call | None = getattr(_current, "call", None)
    if call is not None:
        call.note(conn)


class _DeadlineHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        _note(self)
        super().connect()
        _note(self)  # now with its socket: a deadline passed meanwhile shuts it

    def request(self, *args: Any, **kwargs: Any) -> None:
        _note(self)
        super().request(*args, **kwargs)

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _note(self)
        return super().getresponse(*args, **kwargs)


class _DeadlineHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        _note(self)
        super().connect()
        _note(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _note(self)
        super().request(*args, **kwargs)

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _note(self)
        return super().getresponse(*args, **kwargs)


class _Pool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}


def deadline_session() -> requests.Session:
    """A requests.Session whose connections obey within(); without a within() block it behaves as usual."""
    s = requests.Session()
    adapter = _DeadlineAdapter()
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Calls made by this thread on a deadline_session() inside the block end at most `seconds` (wall clock)
    after it began: past it the connection in use is shut down, so the blocked call raises (requests'
    ConnectionError or an OSError; a read of a streamed body in the block ends early). Raises
    CallDeadlineExceeded (a TimeoutError, chained to what the call raised, if anything) when the deadline
    passed before the block ended — even when the cut-short call seemed to succeed."""
    call = _Call()
    outer = getattr(_current, "call", None)
    _current.call = call
    timer = threading.Timer(max(0.0, seconds), call.expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except Exception as exc:
        if call.expired:
            raise CallDeadlineExceeded(f"not complete within {seconds:g}s") from exc
        raise
    else:
        if call.expired:
            raise CallDeadlineExceeded(f"not complete within {seconds:g}s")
    finally:
        timer.cancel()
        with call.lock:  # a timer firing now finds nothing: the connection may be back in the pool, reused
            call.conn = None
        _current.call = outer
