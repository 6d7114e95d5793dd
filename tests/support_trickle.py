"""A registry that answers one byte per second, on loopback: the slow-registry reproducer of issue 8.

mode "headers": every request gets its status line and headers trickled.
mode "body": HEAD gets prompt headers without a digest (so the client GETs); GET gets prompt headers
(an OCI manifest of 100,000 bytes) and then its body trickled.
It records every connection it accepted and whether the client has closed it, so tests can check that
the client gave up (closed or shut down its socket) rather than being left to trickle on.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class TrickleRegistry:
    def __init__(self, mode: str, interval: float = 1.0, max_connections: int = 200) -> None:
        assert mode in ("headers", "body")
        self.mode = mode
        self.interval = interval
        self.max_connections = max_connections
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.accepted = 0
        self.closed_by_client = 0
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                if self.accepted >= self.max_connections:
                    conn.close()
                    continue
                self.accepted += 1
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> str:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                raise ConnectionError("client closed")
            data += chunk
        return data.split(b" ", 1)[0].decode()

    def _trickle(self, conn: socket.socket, payload: bytes) -> None:
        for i in range(len(payload)):
            if self._stop.is_set():
                return
            conn.sendall(payload[i : i + 1])
            # a closed or shut-down client shows as readable with EOF (or a reset)
            conn.settimeout(self.interval)
            try:
                if conn.recv(1, socket.MSG_PEEK) == b"":
                    raise ConnectionError("client closed")
            except TimeoutError:
                pass

    def _serve(self, conn: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                method = self._read_request(conn)
                size = 100_000
                head = (
                    f"HTTP/1.1 200 OK\r\nDocker-Distribution-Api-Version: registry/2.0\r\n"
                    f"Content-Type: {MANIFEST}\r\nContent-Length: {size}\r\n\r\n"
                ).encode()
                if self.mode == "headers":
                    self._trickle(conn, head + b"x" * size)
                elif method == "HEAD":
                    conn.sendall(head)
                else:
                    conn.sendall(head)
                    self._trickle(conn, b" " * size)
        except (ConnectionError, OSError):
            with self._lock:
                self.closed_by_client += 1
        finally:
            conn.close()

    def wait_all_closed(self, timeout: float) -> bool:
        """True once every accepted connection was closed by the client (a hang guard, not a timing)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if self.accepted and self.closed_by_client >= self.accepted:
                    return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
