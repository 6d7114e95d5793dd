"""A registered daemon's connection to the aggregator (server/node/registration.py, module doc: connections): the
LeaseKeeper opens a connection for each beat and closes it when the call ends, so between beats the aggregator
holds no connection from it (a held one costs it ~23 KiB, issue 12's budget is 10 KiB a node); the lease still
renews, over plaintext and mutual TLS, and stop() still deregisters.

Real parts: an in-process aggregator on a loopback port, a LeaseKeeper, the kernel's socket table (`ss`,
iproute2) counting the established connections whose local port is the aggregator's."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support_daemon import free_port
from support_fleet import aggregator, make_certs
from support_fleet import wait_until as _wait

from nodecompat.server import tls
from nodecompat.server.fleet.aggregator import AggregatorDaemon
from nodecompat.server.inventory.registration_auth import RegistrationPolicy
from nodecompat.server.node import registration
from nodecompat.server.node.registration import LeaseKeeper

OPEN = RegistrationPolicy(allow_unauthenticated=True)  # these tests are about connections, not identity
TTL = 2.0  # the lease the keeper asks for: a beat every 0.67 s, the lease lapses after 2 s without one


def established(port: int) -> int:
    """Established TCP connections whose local port is `port` (the aggregator's side of each)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def registered(agg: AggregatorDaemon) -> set[str]:
    return {n.name for n in agg.inventory.nodes() if n.source == "registered"}


def watch_connections(port: int, seconds: float) -> list[int]:
    """The aggregator's established connections sampled every 20 ms for `seconds`."""
    samples: list[int] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(established(port))
        time.sleep(0.02)
    return samples


def renews_without_holding_a_connection(agg: AggregatorDaemon, keeper: LeaseKeeper) -> None:
    """Over 2 leases (6 beats): the node stays registered (so it renewed: a lease lapses after TTL), and the
    aggregator's connection count is 0 at most samples and never above 1 (one beat's call at a time)."""
    port = int(agg.address.rsplit(":", 1)[1])  # type: ignore[attr-defined]
    keeper.start()
    try:
        assert keeper.registered.wait(10), keeper.last_error
        samples: list[int] = []
        sampler = threading.Thread(target=lambda: samples.extend(watch_connections(port, 2 * TTL)))
        sampler.start()
        seen_lapsed = False
        end = time.monotonic() + 2 * TTL
        while time.monotonic() < end:
            seen_lapsed |= keeper.request.name not in registered(agg)
            time.sleep(0.1)
        sampler.join()
        assert not seen_lapsed, "the lease lapsed: the keeper did not renew"
        assert keeper.registered.is_set() and not keeper.last_error
        idle = samples.count(0)
        # held as before (one connection kept, the aggregator's idle limit 30 s): idle == 0
        assert idle > len(samples) // 2, f"connections held between beats: {samples}"
        assert max(samples) <= 1, samples
    finally:
        keeper.stop()
    _wait(lambda: keeper.request.name not in registered(agg), 5, "deregistration on stop")
    _wait(lambda: established(port) == 0, 5, "no connection after stop")


@pytest.fixture
def plain_agg() -> Iterator[AggregatorDaemon]:
    with aggregator(registration=OPEN) as agg:
        yield agg


def test_a_registered_daemon_holds_no_connection_between_beats(plain_agg: AggregatorDaemon) -> None:
    keeper = LeaseKeeper(plain_agg.address, name="edge-1",  # type: ignore[attr-defined]
                         address=f"127.0.0.1:{free_port()}", ttl=TTL)
    renews_without_holding_a_connection(plain_agg, keeper)


def test_with_mutual_tls_the_beats_renew_without_holding_a_connection(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "pki")
    creds = tls.server_credentials(certs.cert, certs.key, certs.ca)
    with aggregator(registration=OPEN, server_credentials=creds) as agg:
        keeper = LeaseKeeper(agg.address, name="edge-tls", address=f"127.0.0.1:{free_port()}",  # type: ignore[attr-defined]
                             ttl=TTL, tls_ca=str(certs.ca), tls_cert=str(certs.cert), tls_key=str(certs.key))
        renews_without_holding_a_connection(agg, keeper)


def test_failover_still_reaches_the_second_aggregator_beat_after_beat(plain_agg: AggregatorDaemon) -> None:
    """The first address listed is dead: every beat goes to the second (the one that answered last) on its own
    connection, and the lease renews there."""
    dead = f"127.0.0.1:{free_port()}"
    keeper = LeaseKeeper([dead, plain_agg.address], name="edge-2",  # type: ignore[attr-defined]
                         address=f"127.0.0.1:{free_port()}", ttl=TTL)
    renews_without_holding_a_connection(plain_agg, keeper)
    assert keeper.aggregator == plain_agg.address  # type: ignore[attr-defined]



class _Silent:
    """A listener that takes connections (the kernel completes the handshake) and never answers; `accepted`
    is set once a caller connected."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_stop_during_a_hung_beat_leaves_no_registration_behind(
        plain_agg: AggregatorDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two aggregators listed first take the connection and never answer; the third answers. stop() is called
    while the beat waits on the first: it waits for that call (its deadline) and deregisters, and the beat
    does not go on to the other aggregators afterwards. Before, stop() gave up joining after CALL_TIMEOUT while
    the beat failed over, and the beat registered the stopped daemon with the third aggregator after its
    deregistration: a node that shut down stayed listed until its lease lapsed (here 60 s; up to 600 s in a
    big fleet)."""
    monkeypatch.setattr(registration, "CALL_TIMEOUT", 1.0)  # each hung call ends after 1 s
    silent = [_Silent(), _Silent()]
    try:
        keeper = LeaseKeeper([silent[0].address, silent[1].address, plain_agg.address],  # type: ignore[attr-defined]
                             name="edge-stopped", address=f"127.0.0.1:{free_port()}", ttl=60.0)
        keeper.start()
        assert silent[0].accepted.wait(10), "the first beat never reached the first aggregator"
        keeper.stop()
        assert keeper._thread is not None and not keeper._thread.is_alive(), "the beat outlived stop()"
        time.sleep(3 * registration.CALL_TIMEOUT)  # when a failover beat would have reached the third
        assert "edge-stopped" not in registered(plain_agg)
    finally:
        for s in silent:
            s.close()
