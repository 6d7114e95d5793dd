"""TLS for the lean HTTP/2 gRPC client (server/h2/connection.py): an ssl.SSLObject over two memory BIOs
inside the connection's own object. asyncio's TLS transport (sslproto) allocates a 256 KiB read buffer per
connection (SSLProtocol.max_size, Python 3.11), ~25x what the rest of a stream costs; here TLS costs OpenSSL's own
per-connection state and the records in flight. The handshake is driven by the bytes received; the HTTP/2 preface
and request (`pending`) are written once it is done and ALPN chose "h2" (as gRPC core requires)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import grpc

READ_CHUNK = 16384 + 9  # one HTTP/2 frame of the maximum size we take
# Bytes received handed to OpenSSL at a time: a memory BIO keeps the capacity of the most it ever held (per
# connection, for its life), so feeding a 256 KiB socket read at once would keep 256 KiB.
FEED = 4096


class TlsBio:
    """Mixin of H2Connection: the attributes and methods below are H2Connection's (slots there)."""

    __slots__ = ()
    address: str
    pending: bytes
    error: Any
    tls: tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO] | None
    transport: asyncio.Transport | None

    def _fail(self, code: grpc.StatusCode, details: str, h2_code: int | None = None, goaway: bool = False) -> None:
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        raise NotImplementedError

    def _send(self, data: bytes) -> bool:
        """Write `data` (HTTP/2 bytes) to the node: through the TLS object when there is one, else straight to the
        transport. False, nothing written, once the connection is gone or TLS failed (its error ends the connection
        elsewhere)."""
        if self.transport is None:
            return False
        if self.tls is not None:
            try:
                self.tls[0].write(data)
            except ssl.SSLError:
                return False
            self._flush_tls()
        else:
            self.transport.write(data)
        return True

    def _start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """The TLS object over two memory BIOs, and the first handshake step (`pending` is written once it is done)."""
        inc, out_bio = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = (context.wrap_bio(inc, out_bio, server_hostname=server_hostname), inc, out_bio)  # type: ignore[misc]
        self._handshake()

    def _handshake(self) -> None:
        assert self.tls is not None
        sslobj = self.tls[0]
        try:
            sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            return
        except ssl.SSLError as exc:
            self._fail(grpc.StatusCode.UNAVAILABLE, f"TLS handshake with {self.address} failed: {exc}")
            return
        if sslobj.selected_alpn_protocol() != "h2":
            self._fail(grpc.StatusCode.UNAVAILABLE, f"{self.address} did not negotiate HTTP/2 (ALPN h2)")
            return
        if self.pending:
            out, self.pending = self.pending, b""  # type: ignore[misc]
            self._write(out)
        self._flush_tls()
        self._wake()

    def _unwrap(self, data: bytes) -> bytes:
        assert self.tls is not None
        sslobj, inc, _ = self.tls
        chunks = []
        for i in range(0, len(data), FEED):  # fed in pieces, each drained: the BIO's buffer never grows past one
            inc.write(data[i:i + FEED])
            if self.pending:  # handshaking
                self._handshake()
                if self.error is not None:
                    return b""
                if self.pending:
                    continue
            try:
                while True:
                    chunk = sslobj.read(READ_CHUNK)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                self._fail(grpc.StatusCode.UNAVAILABLE, f"TLS error from {self.address}: {exc}")
                return b""
        self._flush_tls()
        return b"".join(chunks)

    def _flush_tls(self) -> None:
        assert self.tls is not None
        out = self.tls[2].read()
        if out and self.transport is not None:
            self.transport.write(out)
