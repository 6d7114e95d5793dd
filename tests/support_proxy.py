"""A threaded TCP proxy that delays or cuts traffic: fault injection for fleet tests.

netem is not built into this kernel (environment.md §3), so a slow or broken network path is made in
user space: every chunk is held for `delay` seconds before it is forwarded (both directions), and
cut() resets every open connection (and, with refuse=True, every new one) as a dying peer would.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest


class TcpProxy:
    def __init__(self, upstream: str, *, delay: float = 0.0, listen_host: str = "127.0.0.1") -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host.strip("[]"), int(port))
        self.delay = delay
        self.refuse = False
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((listen_host, 0))
        self._sock.listen(64)
        self.address = f"{listen_host}:{self._sock.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.accepted = 0
        threading.Thread(target=self._accept_loop, daemon=True, name="tcp-proxy").start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.refuse:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                closed = self._closed.is_set()  # accepted as close() ran: its cut() has already swept
                if not closed:
                    self._conns += [client, server]
            if closed:
                _reset(client)
                _reset(server)
                return
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            _reset(s)

    def cut(self, *, refuse: bool = False) -> None:
        """Reset every open connection; with refuse, reset new ones at once too."""
        self.refuse = refuse
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            _reset(s)

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        self.cut()


def _reset(s: socket.socket) -> None:
    """Reset the connection (RST, not FIN). shutdown(SHUT_RD) first wakes a pump thread blocked in recv() on
    it: until that recv returns it holds the socket open in the kernel, and close() alone would leave the
    connection up (the peer, e.g. a daemon draining on SIGTERM, would wait for it)."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        s.close()


@pytest.fixture
def tcp_proxy() -> Iterator[object]:
    """Factory: tcp_proxy(upstream, delay=...) -> TcpProxy, all closed after the test."""
    made: list[TcpProxy] = []

    def make(upstream: str, **kw: object) -> TcpProxy:
        p = TcpProxy(upstream, **kw)  # type: ignore[arg-type]
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()
