"""Fast start of the node daemon (issue 11: `nodecompat serve` exec -> SERVING): what start-up leaves out
is still there when a call needs it — reflection on its first call, the WatchFeatures hub made after the
first round with that round's features, the rule engine warmed up in the background after SERVING."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from support_daemon import start_daemon
from support_hosts import fixture_host

from nodecompat.fleet.fingerprint import fingerprint
from nodecompat.server.node.daemon import DaemonConfig, NodeDaemon
from nodecompat.server.runtime import grpc_server
from nodecompat.v1 import features_pb2, inventory_pb2, node_pb2_grpc

H100 = fixture_host("h100-server")

# Imported by a call that needs them, or by the warm-up after SERVING; never before SERVING.
WARMED = ("grpc_reflection.v1alpha.reflection", "nodecompat.server.node.feature_watch", "nodecompat.engine.evaluate",
          "nodecompat.engine.spec", "yaml", "re2", "nodecompat.probes.catalog", "nodecompat.engine.goregexp",
          "nodecompat.engine.expression_regex")
LEFT_OUT = (*WARMED, "importlib.metadata", "google.rpc.error_details_pb2")


def test_serving_without_what_only_calls_need_then_warm_up_brings_it() -> None:
    code = f"""
import sys
from nodecompat.server.node.daemon import DaemonConfig, NodeDaemon
left_out = {LEFT_OUT!r}
d = NodeDaemon(DaemonConfig(listen="127.0.0.1:0", host_root=sys.argv[1], hotplug=False))
d.start()
assert d.cache.current(timeout=30) is not None
print("AT SERVING", sorted(m for m in left_out if m in sys.modules))
d.warm_up()
print("AFTER WARM-UP", sorted(m for m in left_out if m in sys.modules))
d.stop(grace=0)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    r = subprocess.run([sys.executable, "-c", code, str(H100)], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" [", 1) for line in r.stdout.splitlines() if " [" in line)
    assert lines["AT SERVING"] == "]"
    warmed = lines["AFTER WARM-UP"]
    for module in WARMED:
        assert repr(module) in warmed, module


def test_reflection_is_imported_on_its_first_call_and_describes_the_services(tmp_path: Path) -> None:
    assert grpc_server.REFLECTION_SERVICE == reflection.SERVICE_NAME
    d = start_daemon(tmp_path, name="reflect")
    try:
        with grpc.insecure_channel(d.address) as ch:
            db = ProtoReflectionDescriptorDatabase(ch)
            assert {"nodecompat.v1.NodeService", "grpc.health.v1.Health", reflection.SERVICE_NAME} <= set(
                db.get_services())
            desc = db.FindFileContainingSymbol("nodecompat.v1.NodeService")
            assert [s.name for s in desc.service] == ["NodeService"]
            assert {m.name for m in desc.service[0].method} >= {"GetFeatures", "ValidateImage", "WatchFeatures"}
            with pytest.raises(KeyError):
                db.FindFileContainingSymbol("nodecompat.v1.NoSuchService")
    finally:
        d.terminate()


@pytest.fixture
def daemon() -> Iterator[NodeDaemon]:
    d = NodeDaemon(DaemonConfig(listen="127.0.0.1:0", host_root=str(H100.root), node_name="lazy-hub", hotplug=False,
                                min_refresh_interval=0))
    d.start()
    yield d
    d.stop(grace=0)


def _wait_for(cond: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.01)


def test_the_watch_hub_made_on_first_watch_starts_from_the_current_round(daemon: NodeDaemon) -> None:
    first = daemon.cache.current(timeout=30)
    assert first is not None
    assert daemon._hub is None  # nothing made it yet: no watcher, no warm-up
    with grpc.insecure_channel(f"127.0.0.1:{daemon.port}") as ch:
        stub = node_pb2_grpc.NodeServiceStub(ch)
        stream = stub.WatchFeatures(inventory_pb2.WatchFeaturesRequest(heartbeat_seconds=300), timeout=60)
        msg = next(stream)
        assert msg.WhichOneof("item") == "features"
        change = msg.features
        assert change.node_name == "lazy-hub" and change.round_id == 1
        assert change.fingerprint == fingerprint(first.features, first.unknown_features())
        stub.GetFeatures(features_pb2.GetFeaturesRequest(refresh=True), timeout=30)  # a new round
        msg = next(stream)
        item = msg.heartbeat if msg.WhichOneof("item") == "heartbeat" else msg.features
        assert item.round_id == 2 and item.fingerprint == change.fingerprint
        stream.cancel()


def test_warm_up_runs_after_serving_even_when_asked_after_the_first_round(daemon: NodeDaemon) -> None:
    assert daemon.cache.current(timeout=30) is not None  # the first round is over before we ask
    daemon.warm_up_after_first_round(delay=0)
    _wait_for(lambda: daemon._hub is not None, "the warm-up made the watch hub")
    _wait_for(lambda: not any(t.name == "warm-up" for t in threading.enumerate()), "the warm-up ended")
    assert "catalog" in vars(daemon.service)  # the feature catalog was built too
