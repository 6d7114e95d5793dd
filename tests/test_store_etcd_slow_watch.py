"""RegisterNode's health (server/inventory/registration_health.py) with an etcd that answers slowly: a real
in-process aggregator with `--store etcd://` on a real Debian etcd-server, paused with SIGSTOP and resumed with
SIGCONT, its grpc.health.v1 Watch stream recording every status it reports.

The etcd watch (server/inventory/etcd_kv.py PrefixWatch) gave its first answer (the stream's head) only the idle
stream's read timeout (watch_read_timeout: 1 s, 0.25 s here), so an etcd pausing a little longer failed the watch:
RegisterNode went NOT_SERVING and back to SERVING with each pause, while a registration made during the pause went
through once etcd resumed (every other etcd call gets a call's timeout, CALL_TIMEOUT = 5 s). Now the first answer
gets a call's timeout too: pauses shorter than it leave RegisterNode SERVING, and a pause longer than it (a
sustained failure) is still reported NOT_SERVING, then SERVING once etcd answers again."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support_daemon import stop_process
from support_etcd import WATCH_READ_TIMEOUT, Etcd, start_etcd, wait_for

from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon
from nodecompat.server.inventory.etcd_kv import CALL_TIMEOUT
from nodecompat.server.inventory.registration_auth import RegistrationPolicy
from nodecompat.server.inventory.registration_health import REGISTRATION_HEALTH
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

OPEN = RegistrationPolicy(allow_unauthenticated=True)
SHORT_PAUSE = 1.5  # s: several idle watch rounds (WATCH_READ_TIMEOUT), well within a call's timeout
LONG_PAUSE = CALL_TIMEOUT + 2.0  # s: longer than a call may wait, a sustained failure


@pytest.fixture
def paused_etcd(tmp_path) -> Iterator[Etcd]:  # type: ignore[no-untyped-def]
    e = start_etcd(tmp_path)  # its own etcd: this test stops and resumes it
    try:
        yield e
    finally:
        os.kill(e.proc.pid, signal.SIGCONT)  # never leave it stopped (stop_process's SIGTERM waits for it)
        stop_process(e.proc, 5.0)


class HealthLog:
    """RegisterNode's statuses as a health Watch stream reports them: (s since start, status name)."""

    def __init__(self, address: str) -> None:
        self.seen: list[tuple[float, str]] = []
        self._t0 = time.monotonic()
        self._channel = grpc.insecure_channel(address)
        self._call = health_pb2_grpc.HealthStub(self._channel).Watch(
            health_pb2.HealthCheckRequest(service=REGISTRATION_HEALTH))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for resp in self._call:
                name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
                self.seen.append((round(time.monotonic() - self._t0, 2), name))
        except grpc.RpcError:
            pass  # cancelled at close()

    def statuses(self) -> list[str]:
        return [s for _t, s in self.seen]

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)
        self._channel.close()


def test_registration_health_stays_serving_through_short_etcd_pauses_and_reports_a_long_one(
        paused_etcd: Etcd) -> None:
    e = paused_etcd
    agg = AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", lease_ttl=600.0, registration=OPEN, sync=None,
                                            check_new_nodes=False, store=e.url,
                                            store_prefix=f"/slow-{uuid.uuid4().hex}/",
                                            store_watch_read_timeout=WATCH_READ_TIMEOUT))
    address = f"127.0.0.1:{agg.start()}"
    log = HealthLog(address)
    try:
        wait_for("RegisterNode SERVING", lambda: log.statuses() == ["SERVING"], 10)
        with grpc.insecure_channel(address) as ch:
            stub = fleet_pb2_grpc.FleetServiceStub(ch)
            for i in range(3):
                os.kill(e.proc.pid, signal.SIGSTOP)
                try:
                    # a registration during the pause waits for etcd (its claim has a call's timeout) ...
                    answer = stub.RegisterNode.future(fleet_pb2.RegisterNodeRequest(
                        name=f"n{i}", address=f"127.0.0.1:{1000 + i}"), timeout=30)
                    time.sleep(SHORT_PAUSE)
                finally:
                    os.kill(e.proc.pid, signal.SIGCONT)
                assert answer.result().ttl_seconds == 600.0  # ... and goes through when it resumes
                time.sleep(2 * WATCH_READ_TIMEOUT)  # a few watch rounds answered after it
            assert log.statuses() == ["SERVING"], log.seen  # no flap: the pauses were not a failure
            os.kill(e.proc.pid, signal.SIGSTOP)
            try:
                wait_for("RegisterNode NOT_SERVING during a long pause", lambda: "NOT_SERVING" in log.statuses(),
                         LONG_PAUSE)
            finally:
                os.kill(e.proc.pid, signal.SIGCONT)
            wait_for("RegisterNode SERVING again", lambda: log.statuses()[-1] == "SERVING", 20)
            assert log.statuses() == ["SERVING", "NOT_SERVING", "SERVING"], log.seen
            assert stub.RegisterNode(fleet_pb2.RegisterNodeRequest(name="after", address="127.0.0.1:2000"),
                                     timeout=20).ttl_seconds == 600.0
    finally:
        log.close()
        agg.stop(grace=0)
