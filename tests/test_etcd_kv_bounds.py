"""etcd_kv bounded against its gateway (server/inventory/etcd_kv.py; issue 14's "every buffer is bounded in bytes"):
a prefix load is read in Range pages pinned to the first page's revision, so the pages are one snapshot even
while keys are written and deleted between them, and holds at most its byte bound; a Range, lease or
transaction answer or a watch line larger than its bound is refused while it is read, not after it was
buffered whole.

Real parts: Debian's etcd-server behind a recording HTTP gateway (a forwarding proxy that sees every Range
call and can write to etcd between two pages), and a hostile gateway that streams an answer without end
(it counts what it got to send before the aggregator hung up)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from support_etcd import Etcd, etcd  # noqa: F401 (fixture)

from nodecompat.server.inventory import etcd_kv
from nodecompat.server.inventory.etcd_kv import EtcdEndpoints, PrefixWatch
from nodecompat.server.inventory.registration_store import StoreUnavailable

ENDLESS = 96 << 20  # bytes a hostile gateway tries to send
CUT_BY = 32 << 20  # at most this much may have left it (the bound plus loopback socket buffers, ~10 MiB)


class Gateway:
    """A loopback HTTP server in front of etcd's gateway (upstream) or, without one, a hostile gateway
    streaming ENDLESS bytes with no end to every call. Records (path, request body) of each call."""

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream
        self.calls: list[tuple[str, dict]] = []  # type: ignore[type-arg]
        self.sent = 0  # bytes of hostile answers that left the gateway
        self.after_first_range: Callable[[], None] | None = None
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                gateway.calls.append((self.path, body))
                if gateway.upstream is None:
                    self._endless(b'{"header":{"revision":"7"},"kvs":[' if "range" in self.path else b'{"result":')
                    return
                answer = requests.post(f"http://{gateway.upstream}{self.path}", json=body, timeout=10).content
                ranges = [c for c in gateway.calls if c[0].endswith("/kv/range")]
                if self.path.endswith("/kv/range") and len(ranges) == 1 and gateway.after_first_range:
                    gateway.after_first_range()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def _endless(self, head: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                block = b"x" * (64 << 10)
                try:
                    for data in [head] + [block] * (ENDLESS // len(block)):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        gateway.sent += len(data)
                except OSError:  # the aggregator hung up: what it was sent so far is counted
                    pass
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="gateway", daemon=True).start()

    def ranges(self) -> list[dict]:  # type: ignore[type-arg]
        return [body for path, body in self.calls if path.endswith("/kv/range")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[Callable[[str | None], Gateway]]:
    made: list[Gateway] = []

    def make(upstream: str | None) -> Gateway:
        made.append(Gateway(upstream))
        return made[-1]

    yield make
    for g in made:
        g.close()


def endpoints(address: str) -> EtcdEndpoints:
    host, port = address.rsplit(":", 1)
    return EtcdEndpoints([(host, int(port))])


def test_a_prefix_load_is_read_in_pages_of_one_snapshot(etcd: Etcd, gateway) -> None:  # noqa: F811
    prefix = f"/t-{uuid.uuid4().hex}/"
    direct = endpoints(etcd.endpoint)
    before = [(f"{prefix}k{i:04d}", f"v{i}".encode()) for i in range(0, 1000, 2)]  # 500 keys
    direct.put_many([(k, v, 0) for k, v in before])
    g = gateway(etcd.endpoint)

    def meanwhile() -> None:  # between the first page and the second: keys added, changed and deleted
        direct.put_many([(f"{prefix}k{i:04d}", b"new", 0) for i in range(1, 1000, 10)],
                        deletes=[k for k, _ in before[300:400]])
        direct.put_many([(before[450][0], b"changed", 0)])

    g.after_first_range = meanwhile
    kvs, revision = endpoints(g.address).range_prefix(prefix, page_keys=64)
    assert kvs == before  # the snapshot of the first page, not a mix of before and after
    pages = g.ranges()
    assert len(pages) == 8  # 500 keys in pages of 64
    assert all(p["limit"] == 64 for p in pages)
    assert "revision" not in pages[0] and {p["revision"] for p in pages[1:]} == {revision}
    now, _ = direct.range_prefix(prefix)
    assert len(now) == 500 + 100 - 100 and (before[450][0], b"changed") in now  # the writes did happen
    # limit: the first keys only, in as few pages as it takes
    g.calls.clear()
    first, _ = endpoints(g.address).range_prefix(prefix, limit=70, page_keys=64)
    assert first == now[:70] and [p["limit"] for p in g.ranges()] == [64, 6]


def test_a_prefix_load_holds_at_most_its_byte_bound(etcd: Etcd) -> None:  # noqa: F811
    prefix = f"/t-{uuid.uuid4().hex}/"
    e = endpoints(etcd.endpoint)
    e.put_many([(f"{prefix}k{i:03d}", b"v" * 1024, 0) for i in range(200)])  # ~200 KiB
    kvs, _ = e.range_prefix(prefix, max_bytes=300 << 10, page_keys=16)
    assert len(kvs) == 200
    with pytest.raises(StoreUnavailable, match=r"more than 102400 bytes of keys and values .*MAX_RANGE_BYTES"):
        e.range_prefix(prefix, max_bytes=100 << 10, page_keys=16)


def test_an_endless_range_answer_is_cut_at_its_bound(gateway) -> None:
    g = gateway(None)
    with pytest.raises(StoreUnavailable, match=r"more than 1048576 bytes .*MAX_RANGE_BYTES.* sent a Range answer over"):
        endpoints(g.address).range_prefix("/p/", max_bytes=1 << 20)
    assert 0 < g.sent < CUT_BY


def test_an_endless_lease_or_transaction_answer_is_cut_at_its_bound(gateway) -> None:
    g = gateway(None)
    e = endpoints(g.address)
    with pytest.raises(StoreUnavailable, match=r"answer to /lease/grant larger than \d+ bytes"):
        e.grant(5)
    with pytest.raises(StoreUnavailable, match=r"answer to /kv/txn larger than \d+ bytes"):
        e.put_many([("/p/k", b"v", 0)])
    assert [path for path, _ in g.calls] == ["/v3/lease/grant", "/v3/kv/txn"]
    assert 0 < g.sent < 2 * CUT_BY  # two answers cut, each near the bound


def test_an_endless_watch_line_is_cut_while_it_is_read(etcd: Etcd, gateway, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setattr(etcd_kv, "MAX_WATCH_LINE", 256 << 10)
    g = gateway(None)
    e = endpoints(g.address)
    # the load goes to the real etcd (an empty prefix); the watch to the hostile gateway
    monkeypatch.setattr(e, "range_prefix", lambda prefix, **kw: endpoints(etcd.endpoint).range_prefix(prefix, **kw))
    states: list[bool] = []
    broke = threading.Event()

    def on_state(up: bool) -> None:
        states.append(up)
        if not up:
            broke.set()

    w = PrefixWatch(e, f"/t-{uuid.uuid4().hex}/", lambda kvs: None, lambda k, v, d: None, on_state)
    w.start()
    try:
        assert broke.wait(60), "the endless watch line was never refused"
    finally:
        w.stop()
    assert states[0] is True and False in states
    assert any(path.endswith("/watch") for path, _ in g.calls)
    assert 0 < g.sent < CUT_BY
