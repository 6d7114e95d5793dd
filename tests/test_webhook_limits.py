"""Limits of `nodecompat webhook` (server/webhook/webhook.py) under hostile load, on a real server (loopback, real
TLS with an openssl CA): a cap on reviews handled at once (past it HTTP 503 at once, /healthz still
answering), and a body trickled byte by byte cannot hold a slot past the request's deadline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from support_daemon import free_port
from support_fleet import make_certs
from support_webhook import pod, review, webhook_in_thread

from nodecompat.server.webhook.webhook import WebhookConfig

DEADLINE = 2.0


@dataclass
class Hook:
    port: int
    ca: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hook]:
    """A webhook handling one review at a time, deadline 2 s, aggregator unreachable."""
    certs = make_certs(tmp_path_factory.mktemp("pki"))
    port = free_port()
    config = WebhookConfig(
        listen_host="127.0.0.1", listen_port=port, tls_cert=str(certs.cert), tls_key=str(certs.key),
        aggregator=f"127.0.0.1:{free_port()}", deadline=DEADLINE, max_concurrent_requests=1,
    )
    with webhook_in_thread(config):
        yield Hook(port, certs.ca)


def _session(hook: Hook) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = str(hook.ca)
    return s


def _small_review() -> dict:
    # an image outside the (empty) allow-list: refused before any connection, answered per the policy
    return review(pod("p", ["127.0.0.1:1/x:1"]))


def test_past_the_cap_reviews_get_503_health_answers_and_a_trickled_body_frees_its_slot(one_slot: Hook) -> None:
    ctx = ssl.create_default_context(cafile=str(one_slot.ca))
    raw = socket.create_connection(("127.0.0.1", one_slot.port), timeout=5)
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    with _session(one_slot) as s:
        try:
            # the slow client: headers at once, then a 100,000-byte body one byte at a time
            tls.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100000\r\n\r\n{")
            refused = None
            for _ in range(100):  # until the slow client's handler holds the one slot (bounded)
                tls.sendall(b" ")
                r = s.post(f"{one_slot.url}/validate", json=_small_review(), timeout=10)
                if r.status_code == 503:
                    refused = r
                    break
                time.sleep(0.1)
            assert refused is not None, "a second review was never refused while the slot was held"
            assert "max-concurrent-requests" in refused.json()["error"]
            assert s.get(f"{one_slot.url}/healthz", timeout=10).text == "ok\n"
            # keep trickling: the deadline is not stretched by bytes arriving; the slow client gets 408
            answer = b""
            end = time.monotonic() + 30.0  # bounded far above DEADLINE for a busy machine
            tls.settimeout(0.2)
            while time.monotonic() < end and b"\r\n\r\n" not in answer:
                with contextlib.suppress(OSError):
                    tls.sendall(b" ")
                try:
                    chunk = tls.recv(4096)
                except (TimeoutError, ssl.SSLWantReadError):
                    continue
                except (ConnectionError, ssl.SSLError):
                    break
                if not chunk:
                    break
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        finally:
            tls.close()
        # the slot is free again: a whole review is answered (HTTP 200, same uid, per the failure policy)
        rev = _small_review()
        for _ in range(50):  # the freed slot may take a moment to be seen (bounded)
            r = s.post(f"{one_slot.url}/validate", json=rev, timeout=10)
            if r.status_code != 503:
                break
            time.sleep(0.1)
        assert r.status_code == 200, r.text
        assert r.json()["response"]["uid"] == rev["request"]["uid"]


def test_max_concurrent_requests_flag_is_checked() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "nodecompat.clients.cli", "webhook", "--listen", "127.0.0.1:1", "--tls-cert", "x",
         "--tls-key", "y", "--aggregator", "127.0.0.1:2", "--max-concurrent-requests", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0 and "--max-concurrent-requests" in out.stderr


class BlackHoleRegistry:
    """A TCP listener that accepts and never answers, counting connections open at once (a registry
    that hangs: every artifact resolution waits on it until its own timeout)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.open = 0
        self.most = 0
        self.accepted = 0
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
                self.accepted += 1
                self.most = max(self.most, self.open)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        conn.settimeout(60)
        with conn, contextlib.suppress(OSError):
            while conn.recv(65536):
                pass
        with self.lock:
            self.open -= 1

    def close(self) -> None:
        self.closing = True
        self.sock.close()


def test_a_pod_with_many_images_resolves_a_bounded_number_at_once_within_the_deadline(
    tmp_path: Path,
) -> None:
    from nodecompat.oci.policy import RegistryPolicy

    certs = make_certs(tmp_path / "pki")
    registry = BlackHoleRegistry()
    port = free_port()
    config = WebhookConfig(
        listen_host="127.0.0.1", listen_port=port, tls_cert=str(certs.cert), tls_key=str(certs.key),
        aggregator=f"127.0.0.1:{free_port()}", deadline=DEADLINE, plain_http=True,
        policy=RegistryPolicy.parse([f"http://127.0.0.1:{registry.port}"]), image_concurrency=3,
    )
    distinct = [f"127.0.0.1:{registry.port}/many/img{i}:1" for i in range(20)]
    containers = (distinct * 13)[:256]  # 256 containers, 20 distinct images
    rev = review(pod("many", containers))
    try:
        with webhook_in_thread(config), _session(Hook(port, certs.ca)) as s:
            r = s.post(f"https://127.0.0.1:{port}/validate", json=rev, timeout=30)
            assert r.status_code == 200, r.text
            resp = r.json()["response"]
            assert resp["uid"] == rev["request"]["uid"]
            # the registry hangs: the deadline passes and the failure policy (fail) denies, saying why
            assert resp["allowed"] is False and "deadline" in resp["status"]["message"]
            assert "registry" in resp["status"]["message"]
        # 20 distinct images, 8 registry threads, but at most 3 resolutions at once for this review
        assert 1 <= registry.most <= 3, registry.most
    finally:
        registry.close()


def _big_review(uid_pod: str, target: int = 3 * 1024 * 1024 - 4096) -> dict:
    """A review of about `target` bytes (under the 3 MiB cap): 256 containers with long env lists."""
    containers = [{"name": f"c{i}", "image": "127.0.0.1:1/x:1", "env": []} for i in range(256)]
    rev = review(pod(uid_pod, ["127.0.0.1:1/x:1"]))
    rev["request"]["object"]["spec"]["containers"] = containers
    size = len(json.dumps(rev))
    per_var = len(json.dumps({"name": "E00000", "value": "v" * 100})) + 2
    n = 0
    while size + per_var < target:
        containers[n % 256]["env"].append({"name": f"E{n:05d}", "value": "v" * 100})
        size += per_var
        n += 1
    return rev


def test_healthz_answers_while_several_3_mib_reviews_are_parsed(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "pki")
    port = free_port()
    config = WebhookConfig(
        listen_host="127.0.0.1", listen_port=port, tls_cert=str(certs.cert), tls_key=str(certs.key),
        aggregator=f"127.0.0.1:{free_port()}",
    )
    hook = Hook(port, certs.ca)
    reviews = [_big_review(f"big{i}") for i in range(6)]
    bodies = [json.dumps(r).encode() for r in reviews]
    assert all(2 * 1024 * 1024 < len(b) <= 3 * 1024 * 1024 for b in bodies)
    answers: dict[int, requests.Response] = {}

    def send(i: int) -> None:
        with _session(hook) as s:
            answers[i] = s.post(f"{hook.url}/validate", data=bodies[i], timeout=60,
                                headers={"Content-Type": "application/json"})

    with webhook_in_thread(config), _session(hook) as s:
        threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(len(bodies))]
        for t in threads:
            t.start()
        healthy_during = 0
        for _ in range(600):  # bounded: until every review is answered
            if all(not t.is_alive() for t in threads):
                break
            assert s.get(f"{hook.url}/healthz", timeout=30).text == "ok\n"
            if any(t.is_alive() for t in threads):
                healthy_during += 1
        for t in threads:
            t.join(60)
    assert healthy_during >= 1
    for i, rev in enumerate(reviews):
        r = answers[i]
        assert r.status_code == 200, r.text[:300]
        resp = r.json()["response"]
        # the image's registry is not allowed: not checked, and the failure policy (fail) denies
        assert resp["uid"] == rev["request"]["uid"] and resp["allowed"] is False


def test_large_reviews_are_parsed_in_a_worker_process_and_answer_the_same(tmp_path: Path) -> None:
    import os

    from nodecompat.admission import review as rv
    from nodecompat.admission.placement import hostname_requirement, placement_patch
    from nodecompat.server.webhook.webhook import Webhook
    from nodecompat.server.webhook.webhook_parse import PARSE_INLINE_BYTES

    rev = _big_review("big")
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}, {"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}
    rev["request"]["object"]["spec"]["affinity"] = affinity
    rev["request"]["object"]["metadata"]["annotations"] = {"team": "a"}
    body = json.dumps(rev).encode()
    small = json.dumps(review(pod("small", ["x"]))).encode()
    assert len(small) <= PARSE_INLINE_BYTES < len(body)
    hook = Webhook(WebhookConfig("127.0.0.1", 0, "", "", "127.0.0.1:1"))

    async def both() -> tuple[rv.PodReview, rv.PodReview]:
        with pytest.raises(rv.ReviewError):  # errors come back from the worker as they are
            await hook.parse(b"[" * 70_000)
        return await hook.parse(body), await hook.parse(small)

    try:
        big, inline = asyncio.run(both())
    finally:
        asyncio.run(hook.parser.close())
    assert big.parsed_in != os.getpid() and inline.parsed_in == os.getpid()
    full = rv.parse_review(body)
    assert big.uid == full.uid and big.images == full.images and big.is_pod_create
    # what travels back is small, and the patch built from it is the one built from the whole pod
    assert len(json.dumps(big.pod)) < 1000
    ours = [[hostname_requirement(["n1", "n2"])]]
    ann = {"nodecompat.io/compatibility": "{}"}
    assert placement_patch(big.pod, ours, [], ann) == placement_patch(full.pod, ours, [], ann)
