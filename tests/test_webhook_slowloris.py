"""Slowloris against `nodecompat webhook` (server/webhook/webhook.py): a peer that opens TCP and never finishes
the TLS handshake, or finishes it and trickles request-header bytes, is disconnected by the webhook's
handshake and header timeouts instead of holding a connection for aiohttp's defaults (60 s handshake,
3,630 s keep-alive), while /healthz answers throughout. Real server on loopback, real TLS (openssl CA)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support_daemon import free_port
from support_fleet import make_certs
from support_webhook import webhook_in_thread

from nodecompat.server.webhook.webhook import WebhookConfig

HANDSHAKE = 1.0
HEADERS = 2.0


@pytest.fixture(scope="module")
def hook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    certs = make_certs(tmp_path_factory.mktemp("pki"))
    port = free_port()
    config = WebhookConfig(
        listen_host="127.0.0.1", listen_port=port, tls_cert=str(certs.cert), tls_key=str(certs.key),
        aggregator=f"127.0.0.1:{free_port()}", handshake_timeout=HANDSHAKE, header_timeout=HEADERS,
    )
    with webhook_in_thread(config):
        yield port, certs.ca


def _healthy(port: int, ca: Path) -> bool:
    with requests.Session() as s:
        s.trust_env = False
        return s.get(f"https://127.0.0.1:{port}/healthz", verify=str(ca), timeout=5).text == "ok\n"


def _closed_by_peer(sock: socket.socket | ssl.SSLSocket, limit: float) -> bool:
    """Whether the server ends the connection within `limit` seconds (EOF or reset on read)."""
    sock.settimeout(limit)
    try:
        return sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


def test_an_unfinished_tls_handshake_is_dropped(hook: tuple[int, Path]) -> None:
    port, ca = hook
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    try:
        for s in socks[:5]:
            s.sendall(b"\x16\x03\x01")  # the start of a ClientHello, never the rest
        assert _healthy(port, ca)
        # bounded well above HANDSHAKE (a busy machine) and far below asyncio's 60 s default
        assert all(_closed_by_peer(s, 20.0) for s in socks)
        assert _healthy(port, ca)
    finally:
        for s in socks:
            s.close()


def test_trickled_request_headers_are_dropped(hook: tuple[int, Path]) -> None:
    port, ca = hook
    ctx = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    try:
        tls.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\n")
        closed = False
        end = time.monotonic() + 30.0  # far below aiohttp's 3,630 s default keep-alive
        while time.monotonic() < end and not closed:
            with contextlib.suppress(OSError):
                tls.sendall(b"X")  # one header byte at a time, never the blank line
            closed = _closed_by_peer(tls, 0.5)
        assert closed, "a peer trickling header bytes kept its connection for 30 s"
        assert _healthy(port, ca)
    finally:
        tls.close()


def test_a_request_sent_at_once_is_still_answered(hook: tuple[int, Path]) -> None:
    port, ca = hook
    assert _healthy(port, ca)
