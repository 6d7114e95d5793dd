"""etcd's v3 primitives as the aggregator uses them: endpoint failover, leases, transactions, and a prefix watch
that reloads after every break. Shared by the registration store (server/inventory/store_etcd.py) and the inventory
shards (server/inventory/inventory_shards.py), so both talk to the same endpoints with the same deadlines.

Client: PyPI `etcd3gw` over etcd's gRPC-JSON gateway (the choice is explained in server/inventory/store_etcd.py). Its
watch iterator is not used: it never ends when the stream breaks (etcd gone), so a replica would stop seeing
the others without knowing it; PrefixWatch reads the gateway's stream itself with a short read timeout, so
every wait is bounded and a break is noticed (reported through `on_state`).

Bounded in bytes against a broken or hostile gateway: a prefix load (range_prefix) is read in pages of
RANGE_PAGE_KEYS keys pinned to the first page's revision (one consistent snapshot; the next page starts at the
last key + "\\0", as etcd's client/v3/mirror/syncer.go SyncBase pages) and holds at most
MAX_RANGE_BYTES of keys and values, each page's answer read with a bound that follows from what is left; a watch
line is checked while it is read (at most WATCH_READ_CHUNK bytes a read), never buffered whole first.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import requests
from etcd3gw import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception
from etcd3gw.utils import _decode, _encode, _increment_last_byte

from nodecompat.oci.deadline import Deadline, deadline_scope, release, watched_session
from nodecompat.server.inventory.registration_store import StoreUnavailable

log = logging.getLogger(__name__)

CALL_TIMEOUT = 5.0  # seconds per etcd call (etcd3gw's requests timeout)
WATCH_BACKOFF = (0.2, 2.0)  # seconds: first and largest wait between watch reconnects
WATCH_READ_TIMEOUT = 1.0  # seconds an idle watch stream is kept before it is re-opened from the same revision
MAX_WATCH_LINE = 8 << 20  # bytes of one watch answer (one revision's events)
WATCH_READ_CHUNK = 64 << 10  # bytes read from a watch stream at a time (etcd's gateway streams chunked)
RANGE_PAGE_KEYS = 256  # keys per Range call of a prefix load
MAX_RANGE_BYTES = 128 << 20  # decoded key and value bytes one prefix load may hold (10,000 registrations of
#                              the largest labels are ~50 MiB; node documents are < 16 KiB, typically < 1 KiB)
RANGE_KV_OVERHEAD = 512  # JSON bytes of one KeyValue in a Range answer beyond its base64 key and value
MAX_ERROR_BYTES = 4096  # bytes of an error answer's body kept for the message
MAX_CALL_ANSWER = 4 << 20  # bytes of a lease or transaction answer (a txn's failure branch reads one key:
#                            etcd's default --max-request-bytes is 1.5 MiB a value)
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops

T = TypeVar("T")
# on_event(key, value, deleted): key as text, value as bytes (b"" for a delete)
OnEvent = Callable[[str, bytes, bool], None]


class EtcdEndpoints:
    """One etcd3gw client per endpoint; each call goes to the endpoint that answered last, then the others."""

    def __init__(self, endpoints: list[tuple[str, int]], *, ca: str | None = None, cert: str | None = None,
                 key: str | None = None, call_timeout: float = CALL_TIMEOUT,
                 watch_read_timeout: float = WATCH_READ_TIMEOUT) -> None:
        """endpoints [(host, port)]; ca/cert/key PEM paths: any set -> HTTPS (cert and key go together);
        call_timeout: seconds one etcd call (connect, head, body) or a watch's head may take (CALL_TIMEOUT);
        watch_read_timeout: seconds an idle watch stream is kept before it is re-opened, which is also how
        long a PrefixWatch's stop() may wait for its stream (WATCH_READ_TIMEOUT). Tests pass shorter ones.
        ValueError: no endpoint, cert without key, a timeout <= 0."""
        if not endpoints:
            raise ValueError("etcd store: at least one endpoint")
        if bool(cert) != bool(key):
            raise ValueError("--store-cert and --store-key go together (the client certificate and its key)")
        if not call_timeout > 0 or not watch_read_timeout > 0:
            raise ValueError(f"etcd store: call_timeout and watch_read_timeout must be > 0 s, not "
                             f"{call_timeout!r} and {watch_read_timeout!r}")
        self.call_timeout = call_timeout
        self.watch_read_timeout = watch_read_timeout
        protocol = "https" if (ca or cert) else "http"
        self.clients = [Etcd3Client(host=h, port=p, protocol=protocol, timeout=call_timeout, api_path="/v3/",
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
                said = f" ({str(exc)[:200]})" if isinstance(exc, ValueError) else ""  # a bad answer: say what
                errors.append(f"{self.clients[idx].host}:{self.clients[idx].port}: {type(exc).__name__}{said}")
                continue
            self.current = idx
            return result
        raise StoreUnavailable(f"etcd store unreachable ({'; '.join(errors)})")

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v3/<path> with a JSON body on the first answering endpoint; the decoded answer, read with a
        bound (MAX_CALL_ANSWER: lease, transaction answers; an endpoint answering more counts as failed)."""
        timeout = self.call_timeout
        return self.call(lambda c: _answer_within(_post_bounded(c, path, body, MAX_CALL_ANSWER, timeout), path))

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
        """One etcd transaction (POST /v3/kv/txn); its decoded answer."""
        return self.post("/kv/txn", body)

    def put_many(self, puts: Sequence[tuple[str, bytes, int]], deletes: Sequence[str] = ()) -> None:
        """(key, value, lease) puts and key deletes in transactions of at most MAX_TXN_OPS operations each."""
        ops: list[dict[str, Any]] = [{"request_put": {"key": _encode(k), "value": _encode(v), "lease": lease}}
                                     for k, v, lease in puts]
        ops += [{"request_delete_range": {"key": _encode(k)}} for k in deletes]
        for i in range(0, len(ops), MAX_TXN_OPS):
            self.txn({"compare": [], "success": ops[i:i + MAX_TXN_OPS], "failure": []})

    def range_prefix(self, prefix: str, limit: int = 0, *, leased_only: bool = False,
                     max_bytes: int = MAX_RANGE_BYTES,
                     page_keys: int = RANGE_PAGE_KEYS) -> tuple[list[tuple[str, bytes]], int]:
        """([(key, value)] under prefix in key order, the store revision read); limit > 0: the first `limit`
        keys only. Read in Range pages of `page_keys` keys, every page after the first at the first page's
        revision (one snapshot: a key written or deleted meanwhile is seen as it was; a compaction of that
        revision meanwhile fails the load: StoreUnavailable, the caller loads again). At most `max_bytes` of
        decoded keys and values are held: more -> StoreUnavailable naming the bound. leased_only: keys bound to
        no lease are left out (for prefixes whose keys must vanish with their writer: one written without a
        lease never would)."""
        end = _encode(_increment_last_byte(prefix))
        key = prefix.encode()
        revision = 0
        held = scanned = 0
        out: list[tuple[str, bytes]] = []
        while True:
            want = min(page_keys, limit - scanned) if limit else page_keys
            body: dict[str, Any] = {"key": _encode(key), "range_end": end, "limit": want}
            if revision:
                body["revision"] = revision
            # an answer within the bound is at most 4/3 of what is left (base64) plus each KeyValue's JSON
            cap = (max_bytes - held) * 4 // 3 + 4 + want * RANGE_KV_OVERHEAD + MAX_ERROR_BYTES
            resp = self.call(lambda c: _post_bounded(c, "/kv/range", body, cap, self.call_timeout))  # noqa: B023 (called at once)
            if resp is None:
                raise StoreUnavailable(self._too_large(prefix, max_bytes, f"a Range answer over {cap} bytes"))
            if not revision:
                revision = int(resp["header"]["revision"])
            kvs = resp.get("kvs") or []
            for kv in kvs:
                raw_key = _decode(kv["key"])
                value = _decode(kv["value"]) if kv.get("value") else b""
                held += len(raw_key) + len(value)
                if held > max_bytes:
                    raise StoreUnavailable(self._too_large(prefix, max_bytes, "its keys and values"))
                if not leased_only or _leased(kv):
                    out.append((raw_key.decode("utf-8", "replace"), value))
                key = raw_key + b"\0"
            scanned += len(kvs)
            if not kvs or not resp.get("more") or (limit and scanned >= limit):
                return out, revision

    def _too_large(self, prefix: str, max_bytes: int, seen: str) -> str:
        where = f"{self.clients[self.current].host}:{self.clients[self.current].port}"
        return (f"etcd prefix {prefix[:200]!r} holds more than {max_bytes} bytes of keys and values (this "
                f"aggregator's bound, MAX_RANGE_BYTES; {where} sent {seen}): not loaded; remove what does not "
                f"belong under it, or use another --store-prefix")


class PrefixWatch:
    """Everything under a prefix, kept current: on (re)connect on_load([(key, value)]) is called with the whole
    prefix, then on_event for every change; on_state(True) after the load and after every watch round etcd
    answered, on_state(False) when the stream breaks. After a break, on_reconnect() is called first, before the
    prefix is loaded again (the writes that must not wait for the catch-up; raising StoreUnavailable counts as
    the round failing). One daemon thread; stop() returns within the endpoints' watch_read_timeout
    (WATCH_READ_TIMEOUT; + one call's timeout). leased_only: a key put without a lease is treated as absent (left
    out of the load, and its put reported as a delete)."""

    def __init__(self, etcd: EtcdEndpoints, prefix: str, on_load: Callable[[list[tuple[str, bytes]]], None],
                 on_event: OnEvent, on_state: Callable[[bool], None] | None = None, name: str = "etcd-watch",
                 *, leased_only: bool = False, on_reconnect: Callable[[], None] | None = None) -> None:
        self.etcd = etcd
        self.leased_only = leased_only
        self.prefix = prefix
        self.on_load = on_load
        self.on_event = on_event
        self.on_state = on_state or (lambda up: None)
        self.on_reconnect = on_reconnect or (lambda: None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.etcd.call_timeout + 1)

    def _loop(self) -> None:
        backoff = WATCH_BACKOFF[0]
        start: int | None = None  # None: (re)load everything first
        broken = False  # the last round failed: on_reconnect before the load
        while not self._stop.is_set():
            try:
                if start is None:
                    if broken:
                        self.on_reconnect()
                        broken = False
                    kvs, revision = self.etcd.range_prefix(self.prefix, leased_only=self.leased_only)
                    self.on_load(kvs)
                    start = revision + 1
                    self.on_state(True)
                start = self._watch_once(self.etcd.clients[self.etcd.current], start)
                self.on_state(True)  # etcd answered this round (clears a failure seen by another call meanwhile)
                backoff = WATCH_BACKOFF[0]
                continue  # an idle stream ends every watch_read_timeout: watch again from where it was
            except (StoreUnavailable, Etcd3Exception, requests.RequestException, OSError, ValueError) as exc:
                if self._stop.is_set():
                    return
                log.warning("etcd watch on %s: %s (retrying in %.1fs)", self.prefix, exc, backoff)
            except Exception:  # the watch thread must outlive whatever one round does
                log.exception("etcd watch on %s failed (retrying in %.1fs)", self.prefix, backoff)
            start = None
            broken = True
            self.on_state(False)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, WATCH_BACKOFF[1])

    def _watch_once(self, client: Etcd3Client, start_revision: int) -> int:
        """One watch stream from start_revision until it has been idle watch_read_timeout, or stop(); returns the
        revision to watch from next. StoreUnavailable (or a requests error) when the stream cannot be opened or
        etcd cancels it (e.g. the revision was compacted): the caller reloads."""
        body = {"create_request": {"key": _encode(self.prefix), "range_end": _encode(_increment_last_byte(self.prefix)),
                                   "start_revision": start_revision}}
        call_timeout = self.etcd.call_timeout
        head = Deadline(time.monotonic() + call_timeout)  # the answer's head within a call's deadline
        # The first answer gets a call's timeout, as every other etcd call: with the idle stream's read timeout
        # (watch_read_timeout, 1 s) an etcd pausing just over a second (a slow fsync, a leader election; SIGSTOP in
        # tests/test_store_etcd_slow_watch.py) failed the watch, and registrations' health flapped NOT_SERVING and
        # back while every registration went through.
        with deadline_scope(head):  # (a trickling peer: _post_bounded)
            resp = client.session.post(client.get_url("/watch"), json=body, stream=True,
                                       timeout=(call_timeout, call_timeout))
        if head.fired:  # a head cut short by the shutdown may parse as complete
            resp.close()
            raise StoreUnavailable(f"etcd watch not answered within {call_timeout}s")
        conn = resp.raw.connection
        sock = conn.sock if conn is not None else None
        release(sock)  # the stream is read with its own bounds
        if sock is not None:
            sock.settimeout(self.etcd.watch_read_timeout)  # the head came: an idle stream ends after this long
        with resp:
            if resp.status_code != 200:
                raise StoreUnavailable(f"etcd watch answered HTTP {resp.status_code}")
            try:
                for line in _bounded_lines(resp, MAX_WATCH_LINE):
                    if self._stop.is_set():
                        return start_revision
                    if not line.strip():
                        continue
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


def _bounded_lines(resp: requests.Response, max_line: int) -> Iterator[bytes]:
    """The lines of a streamed answer, each checked against max_line while it is read: ValueError as soon as
    more than max_line bytes have come without a newline (at most max_line + WATCH_READ_CHUNK are held).
    iter_content with a chunk size reads at most that much at a time, and no more than the current HTTP
    chunk (etcd's gateway sends a chunk per watch answer), so an event is not held back; requests'
    iter_lines(chunk_size=None) would read a whole HTTP chunk, however large, and join lines without bound."""
    buf = bytearray()
    for data in resp.iter_content(chunk_size=WATCH_READ_CHUNK):
        scan = len(buf)  # the bytes before have no newline
        buf += data
        start = 0
        while (nl := buf.find(b"\n", scan)) >= 0:
            line = bytes(buf[start:nl])
            start = scan = nl + 1
            if len(line) > max_line:
                raise ValueError(f"watch answer of {len(line)} bytes (limit {max_line})")
            yield line
        del buf[:start]
        if len(buf) > max_line:
            raise ValueError(f"watch answer of more than {max_line} bytes without its end")
    if buf:
        if len(buf) > max_line:
            raise ValueError(f"watch answer of {len(buf)} bytes (limit {max_line})")
        yield bytes(buf)


def _post_bounded(client: Etcd3Client, path: str, body: dict[str, Any], max_answer: int,
                  call_timeout: float = CALL_TIMEOUT) -> dict[str, Any] | None:
    """POST /v3/<path> on one endpoint, its JSON answer read with a bound: None when it is larger than
    max_answer bytes (read no further); ValueError when it is not a JSON object; Etcd3Exception on a non-200 status (its
    body's first MAX_ERROR_BYTES in the message). The whole call (connect, status line, headers, body) ends
    within call_timeout seconds (EtcdEndpoints.call_timeout) however slowly the peer sends."""
    deadline = Deadline(time.monotonic() + call_timeout)
    data = bytearray()
    late = ValueError(f"etcd answer to {path} not complete within {call_timeout}s")
    # requests knows only per-receive timeouts: a peer sending its status line, headers or body a byte now and
    # then kept one call going for hours. The session's sockets are shut down at the deadline, whatever step
    # the call is at (nodecompat/oci/deadline.py, as for registry calls); a head or body cut short that way
    # may even parse as complete, hence the check of `fired`.
    try:
        with deadline_scope(deadline):
            resp = client.session.post(client.get_url(path), json=body, timeout=call_timeout, stream=True)
            with resp:
                limit = max_answer if resp.status_code == 200 else MAX_ERROR_BYTES
                for part in resp.iter_content(chunk_size=64 << 10):
                    data += part
                    if len(data) > limit:
                        if resp.status_code != 200:
                            break
                        return None
    except (requests.RequestException, OSError) as exc:
        if deadline.fired:
            raise late from exc
        raise
    if deadline.fired:
        raise late
    if resp.status_code != 200:
        raise Etcd3Exception(bytes(data[:limit]).decode("utf-8", "replace"), resp.reason)
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise ValueError(f"etcd answer to {path} is not a JSON object")
    return answer


def _answer_within(answer: dict[str, Any] | None, path: str) -> dict[str, Any]:
    if answer is None:
        raise ValueError(f"etcd answer to {path} larger than {MAX_CALL_ANSWER} bytes")
    return answer


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
    s = watched_session()
    s.trust_env = False
    if ca:
        s.verify = ca
    if cert and key:
        s.cert = (cert, key)
    return s
