"""The webhook's serving certificate, reloaded without a restart when its files change.

cert-manager renews the webhook's certificate by rewriting its Secret; the kubelet then swaps the mounted
files (atomically: a new `..data` symlink to a new directory) and the process keeps running. A server that
read the pair once at start would serve the old certificate until it expires.

How: the listening socket's SSLContext is only a dispatcher. Its `sni_callback` (OpenSSL's servername
callback, called on every ClientHello, with or without SNI: Python ssl docs, SSLContext.sni_callback) asks
`CertReloader.current()` for the context of the newest good pair and sets it on the connection
(`SSLObject.context = ...`, the stdlib's documented way to pick a certificate per connection). `current()`
looks at the files at most every `interval` seconds (os.stat of both, following symlinks: a change of
inode, size or mtime), so a handshake costs no file I/O in between. A changed pair is loaded into a *new*
context and used only if it loads whole (certificate parses, key parses and matches); otherwise the last
good context keeps serving and the failure is logged once per distinct file state — a half-written pair
(certificate renewed, key not yet) is retried when the files change again. Connections already open keep
the certificate they were made with. A file that is not regular (opening a FIFO would block the event loop)
or larger than MAX_PEM_BYTES counts as a pair that does not load.

Hand-written on the stdlib: no maintained Python library reloads an ssl.SSLContext's certificate for an
asyncio server (aiohttp and asyncio take one context at start), and loading the chain into the live
context instead would leave it half-updated when the key does not match (load_cert_chain sets the
certificate before it checks the key).
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
import threading
import time

log = logging.getLogger("nodecompat.webhook")

DEFAULT_RELOAD_INTERVAL = 10.0  # seconds between looks at the files (a renewal comes days before expiry)
MAX_PEM_BYTES = 1 << 20  # a certificate or key file larger than this is not loaded (a Kubernetes Secret holds 1 MiB)


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.2+ server context from PEM files (ssl.SSLError/OSError name the problem)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def _file_state(cert: str, key: str) -> tuple[tuple[int, int, int, int, int], ...] | None:
    """(device, inode, size, mtime_ns, mode) of both files, following symlinks; None when one cannot be read."""
    try:
        return tuple((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_mode) for s in (os.stat(cert), os.stat(key)))
    except OSError:
        return None


class CertReloader:
    """The newest good serving context for the PEM pair (`cert`, `key`); see the module docstring.

    Raises at construction like server_ssl_context when the first pair does not load. Thread-safe (the
    callback runs on the event loop; tests and the CLI may call `current()` from elsewhere).
    """

    def __init__(self, cert: str, key: str, interval: float = DEFAULT_RELOAD_INTERVAL) -> None:
        self.cert, self.key, self.interval = cert, key, max(0.0, interval)
        self._state = _file_state(cert, key)
        self._context = self._listening = server_ssl_context(cert, key)
        self._listening.sni_callback = self._pick
        self._checked = time.monotonic()
        self._failed_state: object = None  # the file state whose load failed (logged once)
        self._lock = threading.Lock()
        self.reloads = 0  # good pairs loaded after the first
        self.failures = 0  # changed pairs that did not load

    def current(self) -> ssl.SSLContext:
        """The context to serve with now; looks at the files when `interval` seconds have passed."""
        now = time.monotonic()
        if now - self._checked < self.interval:
            return self._context
        with self._lock:
            if now - self._checked >= self.interval:
                self._checked = now
                self._look()
            return self._context

    def _look(self) -> None:
        state = _file_state(self.cert, self.key)
        if state is None:
            if self._failed_state != "missing":
                self._failed_state = "missing"
                self.failures += 1
                log.warning("TLS: cannot stat %s or %s; keeping the certificate loaded before", self.cert, self.key)
            return
        if state == self._state:
            self._failed_state = None
            return
        if state == self._failed_state:
            return
        try:
            # a FIFO would block the handshake callback (the event loop) in open; a huge file, in the read
            if not all(stat.S_ISREG(mode) and size <= MAX_PEM_BYTES for _, _, size, _, mode in state):
                raise ValueError(f"not regular files of at most {MAX_PEM_BYTES} bytes")
            context = server_ssl_context(self.cert, self.key)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._failed_state = state
            self.failures += 1
            log.warning("TLS: the changed pair %s / %s does not load (%s); keeping the certificate loaded before",
                        self.cert, self.key, exc)
            return
        self._context, self._state, self._failed_state = context, state, None
        self.reloads += 1
        log.info("TLS: loaded the renewed certificate %s", self.cert)

    def _pick(self, conn: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext) -> None:
        chosen = self.current()
        if chosen is not conn.context:
            conn.context = chosen

    def listening_context(self) -> ssl.SSLContext:
        """The context to give the listening socket (the first pair's): it hands each new connection
        `current()` from its handshake callback."""
        return self._listening


def aggregator_unreachable_hint(details: str, tls_enabled: bool) -> str:
    """What to check when the aggregator's channel failed with UNAVAILABLE and `details` (gRPC's text): a
    closed socket or failed handshake is most often a TLS mismatch (gRPC says only "Socket closed" when the
    aggregator drops a connection without the client certificate it requires). "" when it is not."""
    if "Connection refused" in details or not ("Socket closed" in details or "andshake" in details):
        return ""
    if tls_enabled:
        return (" (check that --aggregator-tls-ca signed the aggregator's certificate and that the aggregator's "
                "--tls-ca signed --aggregator-tls-cert)")
    return (" (the aggregator may serve TLS: pass --aggregator-tls-ca, and --aggregator-tls-cert/--aggregator-tls-key "
            "when it requires client certificates)")
