"""Issue 8 items 2 and the Health guarantee: half-open calls and floods of concurrent calls against real
`nodecompat serve` / `nodecompat aggregator` processes. Health (asked with its own 1 s deadline) answers
SERVING throughout, the attack's calls end with the right status, and the service recovers after.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
from support_daemon import start_daemon
from support_dos import HealthProbe, codes, half_open_calls, never_yields
from support_fleet import SPEC_ANY, host_root, start_aggregator_process

from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc, node_pb2, node_pb2_grpc

VALIDATE = "/nodecompat.v1.NodeService/ValidateImage"


def _wait_all(futures: list[grpc.Future], seconds: float = 120.0) -> None:
    done = threading.Event()
    left = [len(futures)]
    lock = threading.Lock()

    def one(_f: grpc.Future) -> None:
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    for f in futures:
        f.add_done_callback(one)
    assert done.wait(seconds), f"{left[0]} calls still open after {seconds:.0f} s"


def test_half_open_calls_hold_no_worker_health_answers_and_they_end(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--host-root", str(host_root("plain-vm")), "--workers", "2", "--request-timeout", "3")
    stop = threading.Event()
    ch, futures = half_open_calls(d.address, VALIDATE, 20, stop)
    try:
        with HealthProbe(d.address) as probe, grpc.insecure_channel(d.address) as ok_ch:
            # 20 half-open calls and 2 workers: a real call is still served while they are open
            resp = node_pb2_grpc.NodeServiceStub(ok_ch).ValidateImage(
                node_pb2.ValidateImageRequest(spec=SPEC_ANY), timeout=30
            )
            assert resp.compatible
            assert not any(f.done() for f in futures), "the half-open calls should still be open here"
            _wait_all(futures)
        assert probe.answers and set(probe.answers) == {"SERVING"}, probe.answers
        for f in futures:
            exc = f.exception()
            assert isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "the request message did not arrive within 3 s" in (exc.details() or "")
    finally:
        stop.set()
        ch.close()
        assert d.terminate() == 0


def test_two_thousand_concurrent_calls_are_admitted_or_refused_and_health_answers(tmp_path: Path) -> None:
    d = start_daemon(
        tmp_path, "--host-root", str(host_root("plain-vm")), "--max-concurrent-calls", "4", "--workers", "2"
    )
    channels = [grpc.insecure_channel(d.address) for _ in range(8)]
    try:
        stubs = [node_pb2_grpc.NodeServiceStub(c) for c in channels]
        req = node_pb2.ValidateImageRequest(spec=SPEC_ANY)
        # distinct specs, so that no kept answer saves the work
        reqs = [node_pb2.ValidateImageRequest(spec=SPEC_ANY + f"# call {i}\n") for i in range(2000)]
        with HealthProbe(d.address) as probe:
            futures = [stubs[i % 8].ValidateImage.future(reqs[i], timeout=120) for i in range(2000)]
            _wait_all(futures)
        assert probe.answers and set(probe.answers) == {"SERVING"}, probe.answers
        got = codes(futures)
        # (grpc.aio itself ends a few calls of such a burst with CANCELLED before any handler runs; a
        # minimal grpc.aio server with only Health does the same)
        assert grpc.StatusCode.OK in got and grpc.StatusCode.RESOURCE_EXHAUSTED in got
        assert set(got) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
        refused = next(f.exception() for f in futures if f.exception() is not None
                       and f.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "the limit of this server (--max-concurrent-calls 4); retry with backoff" in refused.details()
        # recovered: a call after the flood is served
        assert stubs[0].ValidateImage(req, timeout=30).compatible
    finally:
        for c in channels:
            c.close()
        assert d.terminate() == 0


def test_aggregator_half_open_calls_and_flood(tmp_path: Path) -> None:
    agg = start_aggregator_process(
        tmp_path, "--request-timeout", "3", "--workers", "2", "--max-concurrent-calls", "8",
        "--allow-unauthenticated-registration",
    )
    stop = threading.Event()
    ch, futures = half_open_calls(agg.address, "/nodecompat.v1.FleetService/ListNodes", 10, stop)
    raw = ch.stream_stream(
        "/nodecompat.v1.FleetService/ValidateFleet", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    streams = [raw(never_yields(stop)) for _ in range(10)]
    try:
        with HealthProbe(agg.address) as probe, grpc.insecure_channel(agg.address) as c2:
            stub = fleet_pb2_grpc.FleetServiceStub(c2)
            flood = [
                stub.RegisterNode.future(
                    fleet_pb2.RegisterNodeRequest(name=f"n{i}", address=f"127.0.0.1:{1000 + i}"), timeout=60
                )
                for i in range(500)
            ]
            _wait_all(flood)
            _wait_all(futures)
            for s in streams:
                try:
                    list(s)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                    assert "did not arrive" in (exc.details() or "")
                else:
                    raise AssertionError("a half-open ValidateFleet call ended without an error")
            allowed = {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
            assert set(codes(flood)) <= allowed
            assert len(stub.ListNodes(fleet_pb2.ListNodesRequest(), timeout=30).nodes) >= 1
        assert probe.answers and set(probe.answers) == {"SERVING"}, probe.answers
        assert {c for c in codes(futures)} == {grpc.StatusCode.DEADLINE_EXCEEDED}
    finally:
        stop.set()
        ch.close()
        assert agg.terminate() == 0
