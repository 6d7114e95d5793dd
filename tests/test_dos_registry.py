"""Issue 8 item 1: a registry that answers one byte per second. Every registry interaction ends by the
call's deadline whatever the peer does (the watchdog in nodecompat/oci/deadline.py shuts the socket),
the daemon and the aggregator keep answering Health (asked with its own 1 s deadline), and recover.

No timed asserts: the direct fetch runs under a hang guard (a 1.5 s budget against a response that would
take over a day to trickle), and "the client gave up" is the trickling server seeing its socket closed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support_daemon import start_daemon
from support_dos import HealthProbe
from support_fleet import SPEC_ANY, host_root, start_aggregator_process
from support_trickle import TrickleRegistry

from nodecompat.oci.cache import SpecCache
from nodecompat.oci.errors import DeadlineExceededError
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc, node_pb2, node_pb2_grpc

HANG_SECONDS = 60.0
CALL_DEADLINE = 3.0  # s: the caller's deadline of each slow-registry call (the trickle sends 3 bytes meanwhile)
WATCH_DEADLINE = 10.0  # s: each slow WatchFleet's deadline; the slots they hold are tested within it


@pytest.fixture(params=["headers", "body"])
def trickle(request: pytest.FixtureRequest) -> Iterator[TrickleRegistry]:
    r = TrickleRegistry(request.param)
    yield r
    r.stop()


def test_a_trickling_registry_ends_at_the_budget(trickle: TrickleRegistry) -> None:
    box: dict[str, BaseException] = {}

    def fetch() -> None:
        try:
            SpecCache().fetch(f"{trickle.address}/a/b:c1", plain_http=True, timeout=1.5)
        except BaseException as exc:
            box["exc"] = exc

    t = threading.Thread(target=fetch, daemon=True)
    t.start()
    t.join(HANG_SECONDS)
    assert not t.is_alive(), f"the fetch still runs {HANG_SECONDS:.0f} s after its 1.5 s budget"
    exc = box.get("exc")
    assert isinstance(exc, DeadlineExceededError), exc
    assert "1.5s budget" in str(exc)
    assert trickle.wait_all_closed(HANG_SECONDS), "the client left the registry's socket open"


def _call_all(fn, n: int) -> list[grpc.RpcError | object]:  # type: ignore[no-untyped-def]
    out: list[grpc.RpcError | object] = [None] * n

    def one(i: int) -> None:
        try:
            out[i] = fn(i)
        except grpc.RpcError as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_SECONDS)
    assert not any(t.is_alive() for t in threads), f"calls with a {CALL_DEADLINE:g} s deadline still running"
    return out


def test_daemon_twenty_slow_registry_calls_neither_wedge_it_nor_stop_health(
    tmp_path: Path, trickle: TrickleRegistry
) -> None:
    d = start_daemon(tmp_path, "--host-root", str(host_root("plain-vm")),
                     "--allowed-registries", f"http://{trickle.address}")
    try:
        with grpc.insecure_channel(d.address) as ch, HealthProbe(d.address) as probe:
            stub = node_pb2_grpc.NodeServiceStub(ch)
            results = _call_all(
                lambda i: stub.ValidateImage(
                    node_pb2.ValidateImageRequest(image=f"{trickle.address}/a/b:c{i}", plain_http=True),
                    timeout=CALL_DEADLINE,
                ),
                20,
            )
            # recovered: a call right after is served
            assert stub.ValidateImage(node_pb2.ValidateImageRequest(spec=SPEC_ANY), timeout=30).compatible
        assert probe.answers and set(probe.answers) == {"SERVING"}, probe.answers
        for r in results:
            assert isinstance(r, grpc.RpcError) and r.code() == grpc.StatusCode.DEADLINE_EXCEEDED, r
        # the daemon's own explanation (it answers inside the caller's deadline), not the client's
        explained = [r for r in results if isinstance(r, grpc.RpcError) and "budget" in (r.details() or "")]
        assert explained, [r.details() for r in results if isinstance(r, grpc.RpcError)]
        assert trickle.wait_all_closed(HANG_SECONDS)
    finally:
        assert d.terminate() == 0


def test_aggregator_twenty_slow_registry_calls_neither_wedge_it_nor_stop_health(
    tmp_path: Path, trickle: TrickleRegistry
) -> None:
    agg = start_aggregator_process(tmp_path, "--allowed-registries", f"http://{trickle.address}")
    try:
        with grpc.insecure_channel(agg.address) as ch, HealthProbe(agg.address) as probe:
            stub = fleet_pb2_grpc.FleetServiceStub(ch)
            results = _call_all(
                lambda i: list(stub.ValidateFleet(
                    fleet_pb2.ValidateFleetRequest(image=f"{trickle.address}/a/b:c{i}", plain_http=True),
                    timeout=CALL_DEADLINE,
                )),
                20,
            )
            assert stub.ListNodes(fleet_pb2.ListNodesRequest(), timeout=30) is not None
            summary = list(stub.ValidateFleet(fleet_pb2.ValidateFleetRequest(spec=SPEC_ANY), timeout=30))[-1]
            assert summary.HasField("summary")
        assert probe.answers and set(probe.answers) == {"SERVING"}, probe.answers
        for r in results:
            assert isinstance(r, grpc.RpcError) and r.code() == grpc.StatusCode.DEADLINE_EXCEEDED, r
        assert trickle.wait_all_closed(HANG_SECONDS)
    finally:
        assert agg.terminate() == 0


def test_watchfleet_specs_resolving_from_a_slow_registry_do_not_starve_other_watchers(tmp_path: Path) -> None:
    """Review finding: WatchFleet resolved its image on the loop's default executor (6 threads on 2 cores)
    that every watcher's membership/event work shares, and before taking a watcher slot. 20 watches naming
    an image on a trickling registry left an inline-spec watcher without its first `synced` for its whole
    25 s deadline; 40 were all accepted past the cap of 32. Now resolution has its own pool, after the slot.
    The slow watches' WATCH_DEADLINE (10 s) leaves room for the inline watcher's sync and the 32 more calls
    while the first 20 hold their slots; every one that holds a slot then ends DEADLINE_EXCEEDED."""
    from nodecompat.server.fleet.fleet_watch import MAX_FLEET_WATCHERS
    from nodecompat.v1 import inventory_pb2

    trickle = TrickleRegistry("headers")
    agg = start_aggregator_process(tmp_path, "--allowed-registries", f"http://{trickle.address}", inventory=True)
    try:
        with grpc.insecure_channel(agg.address) as ch, HealthProbe(agg.address) as probe:
            stub = fleet_pb2_grpc.FleetServiceStub(ch)
            slow = [
                stub.WatchFleet(inventory_pb2.WatchFleetRequest(image=f"{trickle.address}/a/b:w{i}", plain_http=True),
                                timeout=WATCH_DEADLINE)
                for i in range(20)
            ]
            end = time.monotonic() + HANG_SECONDS  # the slow resolutions are under way (6 fill the old pool)
            while trickle.accepted < 6 and time.monotonic() < end:
                time.sleep(0.1)
            assert trickle.accepted >= 6
            legit = stub.WatchFleet(inventory_pb2.WatchFleetRequest(spec=SPEC_ANY), timeout=15)
            synced = next((m for m in legit if m.HasField("synced")), None)
            assert synced is not None
            legit.cancel()
            extra = [
                stub.WatchFleet(inventory_pb2.WatchFleetRequest(image=f"{trickle.address}/a/b:x{i}", plain_http=True),
                                timeout=WATCH_DEADLINE)
                for i in range(MAX_FLEET_WATCHERS)
            ]
            codes = []
            for call in slow + extra:
                try:
                    next(iter(call))
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
            assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= len(slow) + len(extra) - MAX_FLEET_WATCHERS
            assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        assert probe.answers and set(probe.answers) == {"SERVING"}, probe.answers
    finally:
        trickle.stop()
        assert agg.terminate() == 0
