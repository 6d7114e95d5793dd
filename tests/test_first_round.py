"""`nodecompat serve`'s first probe round from a child forked before gRPC is imported
(server/node/first_round.py, issue 11 fast start): the same round the daemon would run itself, the daemon's own
round whenever the child's is not a plain success, no child left behind, and no fork where it is unsafe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
from support_daemon import health_status, make_plugin, start_daemon
from support_hosts import FIXTURES

from nodecompat.server.node.first_round import ForkedRound
from nodecompat.v1 import features_pb2, node_pb2, node_pb2_grpc

H100 = str(FIXTURES / "h100-server")

PLUGINS = """
import os, time
from nodecompat.probes.base import FeatureInfo, Probe, ProbeOutput

class HangingProbe(Probe):
    name = "stuck"
    timeout = 0.3
    features = (FeatureInfo("stuck.thing", frozenset({"flag"})),)
    def discover(self, host):
        time.sleep(3600)

class SlowProbe(Probe):
    name = "slow"
    timeout = 120
    features = (FeatureInfo("slow.thing", frozenset({"attribute"})),)
    def discover(self, host):
        time.sleep(float(open(os.environ["SLOW_KNOB"]).read()))
        out = ProbeOutput()
        out.features.add_attributes("slow.thing", {"t": "1"})
        return out
"""


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """Run `code` in a fresh interpreter (no gRPC imported, one thread: where serve forks); its last
    stdout line is JSON."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    full.update(env or {})
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=full)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])  # type: ignore[no-any-return]


_REAPED = """
def reaped(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False
"""


def test_the_forked_round_is_the_round_the_daemon_would_run_and_the_parent_imports_no_probe() -> None:
    code = _REAPED + """
import json, os, sys
from pathlib import Path
from nodecompat.server.node.first_round import ForkedRound, configured_probes
root, sysctl = sys.argv[1], ["net.ipv4.tcp_rmem"]
first = ForkedRound.start(root, None, "forked-node", sysctl, None)
assert first is not None
rnd = first.result()
out = {"parent_probe_modules": sorted(m for m in sys.modules if m.startswith("nodecompat.probes.")
                                      and m.rsplit(".", 1)[1] in ("cpu", "pci", "kernel", "system", "sysctl")),
       "reaped": reaped(first.pid), "again": first.result() is None}
from nodecompat.hostroot import HostRoot
from nodecompat.probes.runner import ProbeRunner
probes, errors = configured_probes(None, "forked-node", sysctl)
here = ProbeRunner(probes, HostRoot(Path(root)), errors).run()
status = lambda r: [(s.name, s.ok, s.error, s.features, s.notes, s.timed_out) for s in r.statuses]
out["same_features"] = rnd.features == here.features
out["same_statuses"] = status(rnd) == status(here)
out["nodename"] = rnd.features.attributes["system.name"].elements.get("nodename")
out["probes"] = len(rnd.statuses)
print(json.dumps(out))
"""
    out = _run(code, H100)
    assert out["parent_probe_modules"] == []  # the probes ran in the child only
    assert out["reaped"] and out["again"]
    assert out["same_features"] and out["same_statuses"]
    assert out["nodename"] == "forked-node"  # serve --node-name reaches the child's system probe
    assert int(out["probes"]) >= 10  # type: ignore[call-overload]


def test_no_round_from_the_child_when_a_probe_timed_out_or_the_child_died(tmp_path: Path) -> None:
    site = make_plugin(tmp_path, "fr_plugins", PLUGINS, {"stuck": "fr_plugins:HangingProbe",
                                                         "slow": "fr_plugins:SlowProbe"})
    knob = tmp_path / "slow"
    knob.write_text("60")
    code = _REAPED + """
import json, os, signal, sys, time
from nodecompat.server.node.first_round import ForkedRound
out = {}
# A probe hung in the child: only the runner that abandoned the call can say "still hung" later, so the
# daemon probes itself.
first = ForkedRound.start(sys.argv[1], ["stuck", "kernel"], "n", [], None)
t = time.monotonic()
out["hung"] = first.result() is None
out["hung_seconds"] = time.monotonic() - t
out["hung_reaped"] = reaped(first.pid)
# The child killed while it probes (a crash, the OOM killer).
first = ForkedRound.start(sys.argv[1], ["slow"], "n", [], None)
os.kill(first.pid, signal.SIGKILL)
out["killed"] = first.result() is None
out["killed_reaped"] = reaped(first.pid)
# No answer within the wait: the child is killed and reaped.
first = ForkedRound.start(sys.argv[1], ["slow"], "n", [], None)
t = time.monotonic()
out["late"] = first.result(wait=0.5) is None
out["late_seconds"] = time.monotonic() - t
out["late_reaped"] = reaped(first.pid)
print(json.dumps(out))
"""
    out = _run(code, H100, env={"PYTHONPATH": str(site), "SLOW_KNOB": str(knob)})
    assert out["hung"] and out["hung_reaped"]
    assert float(out["hung_seconds"]) < 30  # type: ignore[arg-type]  # the probe sleeps 3600 s
    assert out["killed"] and out["killed_reaped"]
    assert out["late"] and out["late_reaped"]
    assert float(out["late_seconds"]) < 30  # type: ignore[arg-type]  # the probe sleeps 60 s


def test_a_child_still_running_after_the_reap_wait_is_reaped_later_not_left_a_zombie(tmp_path: Path) -> None:
    # A child killed in an uninterruptible read dies only when the read ends, after REAP_WAIT: a thread
    # waits for it then. Here a child that is simply still probing (REAP_WAIT 0) stands in for it.
    site = make_plugin(tmp_path, "fr_plugins", PLUGINS, {"slow": "fr_plugins:SlowProbe"})
    knob = tmp_path / "slow"
    knob.write_text("1")
    code = _REAPED + """
import json, os, sys, time
import nodecompat.server.node.first_round as fr
fr.REAP_WAIT = 0.0
first = fr.ForkedRound.start(sys.argv[1], ["slow"], "n", [], None)
out = {"status": first._reap(kill=False)}
# the probe sleeps 1 s, then the child writes its round (nobody reads it) and exits: wait (up to 30 s) for its
# /proc entry to go, which only a waitpid by the parent's reaper thread does (a zombie keeps it; nothing
# here calls waitpid before `reaped` below)
deadline = time.monotonic() + 30
while os.path.exists(f"/proc/{first.pid}") and time.monotonic() < deadline:
    time.sleep(0.05)
out["reaped"] = reaped(first.pid)
out["zombie"] = os.path.exists(f"/proc/{first.pid}")
print(json.dumps(out))
"""
    out = _run(code, H100, env={"PYTHONPATH": str(site), "SLOW_KNOB": str(knob)})
    assert out["status"] == "still running"
    assert out["reaped"] and not out["zombie"]


def test_no_fork_once_grpc_is_imported_or_another_thread_runs() -> None:
    assert "grpc" in sys.modules  # this test process
    assert ForkedRound.start(H100, ["kernel"], "n", [], None) is None
    code = """
import json, threading
from nodecompat.server.node.first_round import ForkedRound
stop = threading.Event()
t = threading.Thread(target=stop.wait)
t.start()
first = ForkedRound.start(__import__("sys").argv[1], ["kernel"], "n", [], None)
stop.set()
t.join()
print(json.dumps({"forked": first is not None}))
"""
    assert _run(code, H100) == {"forked": False}


SPEC = """version: v1alpha1
compatibilities:
- description: kernel
  rules:
  - name: kernel
    matchFeatures:
    - feature: kernel.version
      matchExpressions:
        major: {op: Exists}
"""


def test_serve_stores_the_childs_round_then_probes_itself(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--log-level", "DEBUG", "--host-root", H100, name="from-child",
                     env={k: "" for k in os.environ if k.startswith("OTEL_")})
    try:
        with grpc.insecure_channel(d.address) as ch:
            stub = node_pb2_grpc.NodeServiceStub(ch)
            first = stub.GetFeatures(features_pb2.GetFeaturesRequest(), timeout=30)
            assert first.features.attributes["system.name"].elements["nodename"] == "from-child"
            assert "kernel.version" in first.features.attributes
            # The next round is the daemon's own (its probes loaded on first use): the same facts.
            fresh = stub.GetFeatures(features_pb2.GetFeaturesRequest(refresh=True), timeout=30)
            assert fresh.probed_at.ToDatetime() > first.probed_at.ToDatetime()
            assert fresh.features == first.features
            assert [p.name for p in fresh.probes] == [p.name for p in first.probes]
            verdict = stub.ValidateImage(node_pb2.ValidateImageRequest(spec=SPEC), timeout=30)
            assert verdict.compatible
    finally:
        assert d.terminate() == 0
    log = d.log.read_text()
    assert "first probe round from the start-up prober" in log, log


def test_serve_with_tracing_runs_its_first_round_itself(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--log-level", "DEBUG", "--host-root", H100,
                     env={"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": ""})
    try:
        assert health_status(d.address) == "SERVING"
    finally:
        assert d.terminate() == 0
    log = d.log.read_text()
    assert "start-up prober" not in log
    assert '"name": "probe round"' in log  # the first round's span is exported by the daemon


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def test_sigterm_while_the_child_probes_stops_the_child_too(tmp_path: Path) -> None:
    site = make_plugin(tmp_path, "fr_plugins", PLUGINS, {"slow": "fr_plugins:SlowProbe"})
    knob = tmp_path / "slow"
    knob.write_text("60")
    d = start_daemon(tmp_path, "--probes", "slow,kernel", wait=False,
                     env={"PYTHONPATH": str(site), "SLOW_KNOB": str(knob)})
    try:
        deadline = time.monotonic() + 30
        while health_status(d.address) != "NOT_SERVING":  # listening, the first round under way
            assert time.monotonic() < deadline and d.proc.poll() is None, d.log.read_text()
            time.sleep(0.05)
        children = _children(d.proc.pid)
        assert len(children) == 1, children  # the prober
    finally:
        started = time.monotonic()
        rc = d.terminate(timeout=30)
    assert rc == 0, d.log.read_text()
    assert time.monotonic() - started < 20  # not the probe's 60 s
    assert not Path(f"/proc/{children[0]}").exists()
    assert "Traceback" not in d.log.read_text()
    assert "probing here" not in d.log.read_text()  # stopping: nobody probes, and the log does not say so



def _ended(pid: int) -> bool:
    """The process is gone or a zombie (an orphan is reaped by init or a subreaper, not by us)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def test_the_child_ends_when_its_parent_is_killed_while_it_probes(tmp_path: Path) -> None:
    # The parent killed outright (SIGKILL, the OOM killer) while the child probes: nothing is left to kill
    # or reap the child, so it must notice itself instead of running its round (here a 60 s probe) alone.
    site = make_plugin(tmp_path, "fr_plugins", PLUGINS, {"slow": "fr_plugins:SlowProbe"})
    knob = tmp_path / "slow"
    knob.write_text("60")
    code = """
import os, signal, sys
from nodecompat.server.node.first_round import ForkedRound
first = ForkedRound.start(sys.argv[1], ["slow"], "n", [], None)
print(first.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(PYTHONPATH=str(site), SLOW_KNOB=str(knob))
    r = subprocess.run([sys.executable, "-c", code, H100], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == -9, r.stderr
    child = int(r.stdout.split()[0])
    deadline = time.monotonic() + 30
    try:
        while not _ended(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _ended(child), "the start-up prober outlived its parent"
    finally:
        if not _ended(child):
            os.kill(child, 9)
