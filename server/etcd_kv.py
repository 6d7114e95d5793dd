"""etcd's v3 primitives as the aggregator uses them: endpoint failover, leases, transactions, and a prefix watch
that reloads after every break. Shared by the registration store (server/store_etcd.py) and the inventory
shards (server/inventory_shards.py), so both talk to the same endpoints with the same deadlines.

Client: PyPI `etcd3gw` over etcd's gRPC-JSON gateway (the choice is explained in server/store_etcd.py). Its
watch iterator is not used: it never ends when the stream breaks (etcd gone), so a replica would stop seeing
the others without knowing it; PrefixWatch reads the gateway's stream itself with a short read timeout, so
every wait is bounded and a break is noticed (reported through `on_state`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import requests
from etcd3gw import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception
from etcd3gw.utils import _decode, _encode, _increment_last_byte

from nodecompat.server.registration_store import StoreUnavailable

log = logging.getLogger(__name__)

CALL_TIMEOUT = 5.0  # seconds per etcd call (etcd3gw's requests timeout)
WATCH_BACKOFF = (0.2, 2.0)  # seconds: first and largest wait between watch reconnects
WATCH_READ_TIMEOUT = 1.0  # seconds an idle watch stream is kept before it is re-opened from the same revision
MAX_WATCH_LINE = 8 << 20  # bytes of one watch answer (one revision's events)
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops

T = TypeVar("T")
# on_event(key, value, deleted): key as text, value as bytes (b"" for a delete)
OnEvent = Callable[[str, bytes, bool], None]


class EtcdEndpoints:
    """One etcd3gw client per endpoint; each call goes to the endpoint that answered last, then the others."""

    def __init__(self, endpoints: list[tuple[str, int]], *, ca: str | None = None, cert: str | None = None,
                 key: str | None = None) -> None:
        """endpoints [(host, port)]; ca/cert/key PEM paths: any set -> HTTPS (cert and key go together)."""
        if not endpoints:
            raise ValueError("etcd store: at least one endpoint")
        if bool(cert) != bool(key):
            raise ValueError("--store-cert and --store-key go together (the client certificate and its key)")
        protocol = "https" if (ca or cert) else "http"
        self.clients = [Etcd3Client(host=h, port=p, protocol=protocol, timeout=CALL_TIMEOUT, api_path="/v3/",
                                    session=_session(ca, cert, key)) for h, p in endpoints]
        self.current = 0

    def call(self, fn: Callable[[Etcd3Client], T]) -> T:
        """fn on the current endpoint, then on each other; StoreUnavailable when none answers."""
        errors = []
        n = len(self.clients)
        first = self.current  # read once: another thread's call may move it while this one tries each endpoint
        for i in range(n):
            idx = (first + i) % n
            try:
                result = fn(self.clients[idx])
            except (Etcd3Exception, OSError, ValueError) as exc:  # ValueError: a non-JSON answer
                errors.append(f"{self.clients[idx].host}:{self.clients[idx].port}: {type(exc).__name__}")
                continue
            self.current = idx
            return result
        raise StoreUnavailable(f"etcd store unreachable ({'; '.join(errors)})")

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v3/<path> with a JSON body on the first answering endpoint; the decoded answer."""
        return self.call(lambda c: c.post(c.get_url(path), json=body))

    def grant(self, ttl: int) -> int:
        """A new lease of `ttl` whole seconds; its id."""
        return int(self.post("/lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease_id: int) -> int:
        """Renew a lease once; the TTL etcd answered (0: the lease is gone, grant a new one)."""
        resp = self.post("/lease/keepalive", {"ID": lease_id})
        return int((resp.get("result") or resp).get("TTL", 0) or 0)

    def revoke(self, lease_id: int) -> None:
        """Revoke a lease (its keys go with it); StoreUnavailable is logged, the lease then lapses on its own."""
        try:
            self.post("/kv/lease/revoke", {"ID": lease_id})
        except StoreUnavailable as exc:
            log.info("etcd lease %x not revoked: %s", lease_id, exc)

    def txn(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call(lambda c: c.transaction(body)))

    def put_many(self, puts: Sequence[tuple[str, bytes, int]], deletes: Sequence[str] = ()) -> None:
        """(key, value, lease) puts and key deletes in transactions of at most MAX_TXN_OPS operations each."""
        ops: list[dict[str, Any]] = [{"request_put": {"key": _encode(k), "value": _encode(v), "lease": lease}}
                                     for k, v, lease in puts]
        ops += [{"request_delete_range": {"key": _encode(k)}} for k in deletes]
        for i in range(0, len(ops), MAX_TXN_OPS):
            self.txn({"compare": [], "success": ops[i:i + MAX_TXN_OPS], "failure": []})

    def range_prefix(self, prefix: str, limit: int = 0, *,
                     leased_only: bool = False) -> tuple[list[tuple[str, bytes]], int]:
        """([(key, value)] under prefix, the store revision read); leased_only: keys bound to no lease are left
        out (for prefixes whose keys must vanish with their writer: one written without a lease never would)."""
        body: dict[str, Any] = {"key": _encode(prefix), "range_end": _encode(_increment_last_byte(prefix))}
        if limit:
            body["limit"] = limit
        resp = self.post("/kv/range", body)
        kvs = [(_text(kv["key"]), _decode(kv["value"]) if kv.get("value") else b"") for kv in resp.get("kvs", [])
               if not leased_only or _leased(kv)]
        return kvs, int(resp["header"]["revision"])


class PrefixWatch:
    """Everything under a prefix, kept current: on (re)connect on_load([(key, value)]) is called with the whole
    prefix, then on_event for every change; on_state(True) after the load and after every watch round etcd
    answered, on_state(False) when the stream breaks. One daemon thread; stop() returns within
    WATCH_READ_TIMEOUT (+ one call's timeout). leased_only: a key put without a lease is treated as absent
    (left out of the load, and its put reported as a delete)."""

    def __init__(self, etcd: EtcdEndpoints, prefix: str, on_load: Callable[[list[tuple[str, bytes]]], None],
                 on_event: OnEvent, on_state: Callable[[bool], None] | None = None, name: str = "etcd-watch",
                 *, leased_only: bool = False) -> None:
        self.etcd = etcd
        self.leased_only = leased_only
        self.prefix = prefix
        self.on_load = on_load
        self.on_event = on_event
        self.on_state = on_state or (lambda up: None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=CALL_TIMEOUT + 1)

    def _loop(self) -> None:
        backoff = WATCH_BACKOFF[0]
        start: int | None = None  # None: (re)load everything first
        while not self._stop.is_set():
            try:
                if start is None:
                    kvs, revision = self.etcd.range_prefix(self.prefix, leased_only=self.leased_only)
                    self.on_load(kvs)
                    start = revision + 1
                    self.on_state(True)
                start = self._watch_once(self.etcd.clients[self.etcd.current], start)
                self.on_state(True)  # etcd answered this round (clears a failure seen by another call meanwhile)
                backoff = WATCH_BACKOFF[0]
                continue  # an idle stream ends every WATCH_READ_TIMEOUT: watch again from where it was
            except (StoreUnavailable, Etcd3Exception, requests.RequestException, OSError, ValueError) as exc:
                if self._stop.is_set():
                    return
                log.warning("etcd watch on %s: %s (retrying in %.1fs)", self.prefix, exc, backoff)
            except Exception:  # the watch thread must outlive whatever one round does
                log.exception("etcd watch on %s failed (retrying in %.1fs)", self.prefix, backoff)
            start = None
            self.on_state(False)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, WATCH_BACKOFF[1])

    def _watch_once(self, client: Etcd3Client, start_revision: int) -> int:
        """One watch stream from start_revision until it has been idle WATCH_READ_TIMEOUT, or stop(); returns the
        revision to watch from next. StoreUnavailable (or a requests error) when the stream cannot be opened or
        etcd cancels it (e.g. the revision was compacted): the caller reloads."""
        body = {"create_request": {"key": _encode(self.prefix), "range_end": _encode(_increment_last_byte(self.prefix)),
                                   "start_revision": start_revision}}
        resp = client.session.post(client.get_url("/watch"), json=body, stream=True,
                                   timeout=(CALL_TIMEOUT, WATCH_READ_TIMEOUT))
        with resp:
            if resp.status_code != 200:
                raise StoreUnavailable(f"etcd watch answered HTTP {resp.status_code}")
            try:
                for line in resp.iter_lines(chunk_size=None):
                    if self._stop.is_set():
                        return start_revision
                    if not line.strip():
                        continue
                    if len(line) > MAX_WATCH_LINE:
                        raise ValueError(f"watch answer of {len(line)} bytes")
                    chunk = json.loads(line)
                    result = chunk.get("result") or {}
                    if "error" in chunk or result.get("canceled"):
                        raise StoreUnavailable(f"etcd watch ended: {str(chunk)[:200]}")
                    for event in result.get("events", []):
                        kv = event.get("kv") or {}
                        value = kv.get("value", "")
                        deleted = event.get("type") == "DELETE" or (self.leased_only and not _leased(kv))
                        self.on_event(_text(kv.get("key", "")), b"" if deleted or not value else _decode(value),
                                      deleted)
                        start_revision = max(start_revision, int(kv.get("mod_revision", 0)) + 1)
            except requests.ConnectionError as exc:  # the read timeout of an idle stream (or etcd went away)
                if "timed out" not in str(exc):
                    raise
        return start_revision


def _leased(kv: dict[str, Any]) -> bool:
    """The gateway's KeyValue is bound to a lease (its `lease` field, an int64 as a JSON string, absent when 0)."""
    try:
        return int(kv.get("lease") or 0) != 0
    except (TypeError, ValueError):
        return False


def _text(b64: str) -> str:
    return _decode(b64).decode("utf-8", "replace") if b64 else ""


def _session(ca: str | None, cert: str | None, key: str | None) -> requests.Session:
    """The HTTP session of one endpoint's client. Built here rather than by etcd3gw (which sets verify/cert
    on its own session) to turn off requests' trust_env: with it, REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE in
    the environment silently replaces the session's CA (psf/requests#2998, #3829; seen on this machine: --store-ca
    ignored, etcd's certificate "unable to get local issuer"), and HTTP(S)_PROXY would send the calls to
    etcd's own listed endpoints through a proxy."""
    s = requests.Session()
    s.trust_env = False
    if ca:
        s.verify = ca
    if cert and key:
        s.cert = (cert, key)
    return s
