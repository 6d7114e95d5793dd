"""One registry operation's budget, keep-alive sessions and bearer tokens (used by transport.py).

- Budget: one monotonic deadline for a whole operation (the daemon passes the caller's remaining gRPC
  deadline); its sockets are shut down when it passes (nodecompat/oci/deadline.py).
- SessionPool: one requests.Session per (thread, host) for keep-alive; sessions are not shared between
  threads because requests does not promise that is safe. Bearer tokens are cached per host/scope until
  they expire, at most 1,024 entries.
- parse_challenge: a WWW-Authenticate header's scheme and auth-params (RFC 7235 section 4.1, RFC 6750
  section 3), which requests does not parse.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

import requests

from nodecompat.oci.deadline import Deadline, watched_session
from nodecompat.oci.errors import DeadlineExceededError

USER_AGENT = "nodecompat-oci/0.1"
_PARAM_RE = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


class Budget:
    """A monotonic deadline shared by every request of one operation."""

    def __init__(self, timeout: float) -> None:
        if not timeout or timeout <= 0:
            raise DeadlineExceededError("no time left for the registry operation (timeout <= 0)")
        self.timeout = float(timeout)
        self.deadline = time.monotonic() + self.timeout
        self.sockets = Deadline(self.deadline)  # shuts the operation's sockets down at the deadline

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, what: str) -> float:
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceededError(
                f"registry operation exceeded its {self.timeout:g}s budget while {what}"
            )
        return left


@dataclass
class _Token:
    header: str
    expires: float


@dataclass
class SessionPool:
    """Keep-alive sessions and auth tokens, shareable across calls and threads (e.g. by SpecCache)."""

    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _tokens: dict[tuple[str, ...], _Token] = field(default_factory=dict)

    def session(self, host: str) -> requests.Session:
        sessions: dict[str, requests.Session] | None = getattr(self._local, "sessions", None)
        if sessions is None:
            sessions = self._local.sessions = {}
        sess = sessions.get(host)
        if sess is None:
            sess = watched_session()
            sess.headers["User-Agent"] = USER_AGENT
            sess.trust_env = False  # no proxies or netrc from the environment behind our back
            sessions[host] = sess
        return sess

    def get_token(self, key: tuple[str, ...]) -> str | None:
        with self._lock:
            tok = self._tokens.get(key)
            if tok is None:
                return None
            if tok.expires < time.monotonic():
                del self._tokens[key]
                return None
            return tok.header

    def put_token(self, key: tuple[str, ...], header: str, ttl: float) -> None:
        with self._lock:
            if len(self._tokens) > 1024:
                self._tokens.clear()
            self._tokens[key] = _Token(header, time.monotonic() + max(ttl - 5.0, 1.0))


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split `Bearer realm="..",service=".."` into ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM_RE.finditer(rest)}
    return scheme.lower(), params
