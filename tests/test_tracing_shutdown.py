"""SIGTERM of `nodecompat serve` with OTLP/http tracing on exits 0, never "terminate called without an
active exception" (SIGABRT, exit -6).

The cause (found from a core dump of the abort): `serve` imports the rule engine on a warm-up thread after
the first probe round (clients/cmd_serve._warm_up_after_first_round). It was a daemon thread; SIGTERM
arriving while it was inside `re2`'s pybind11 module init let the interpreter finalize under it, and
CPython's pthread_exit of that thread unwound through pybind11's noexcept ~gil_scoped_release, so
std::terminate. The fix makes interpreter exit wait for that thread.

The first test pins the order deterministically: a sitecustomize (on the daemon's PYTHONPATH) slows the
warm-up thread's import of `re2` by SLOW_IMPORT seconds, SIGTERM lands inside that window, and an atexit
hook of the daemon (atexit runs after threading's shutdown joins non-daemon threads, before finalization)
records whether the warm-up thread was still running. The second repeats the real thing: daemons with
OTLP/http tracing to a real HTTP receiver, one call, SIGTERM, exit 0 and no abort in the log, several times.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from support_daemon import start_daemon, stop_process
from support_otlp import OtlpHttpReceiver, otlp_http_receiver  # noqa: F401 (fixture)

from nodecompat.v1 import features_pb2, node_pb2_grpc

SLOW_IMPORT = 2.0
RUNS = 6

SITECUSTOMIZE = """
import atexit, os, sys, threading, time

class _SlowWarmUp:
    def find_spec(self, name, path=None, target=None):
        if name == "re2" and threading.current_thread().name == "warm-up":
            with open(os.environ["NC_TEST_MARK"], "a") as f:
                f.write("warm-up importing\\n")
            time.sleep(float(os.environ["NC_TEST_SLOW_IMPORT"]))
        return None

sys.meta_path.insert(0, _SlowWarmUp())

def _at_exit():
    alive = [t.name for t in threading.enumerate() if t.name == "warm-up" and t.is_alive()]
    with open(os.environ["NC_TEST_MARK"], "a") as f:
        f.write(f"at exit, warm-up running: {bool(alive)}\\n")

atexit.register(_at_exit)
"""


def _tracing_env(receiver: OtlpHttpReceiver) -> dict[str, str]:
    return {**receiver.env(), "PYTHONFAULTHANDLER": "1"}


def test_exit_waits_for_the_warm_up_import_before_the_interpreter_finalizes(
    tmp_path: Path, otlp_http_receiver: OtlpHttpReceiver  # noqa: F811 (fixture)
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    mark = tmp_path / "mark.txt"
    import os

    env = {**_tracing_env(otlp_http_receiver), "NC_TEST_MARK": str(mark), "NC_TEST_SLOW_IMPORT": str(SLOW_IMPORT),
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    d = start_daemon(tmp_path, env=env)
    end = time.monotonic() + 30
    while "warm-up importing" not in (mark.read_text() if mark.exists() else "") and time.monotonic() < end:
        time.sleep(0.02)
    assert "warm-up importing" in mark.read_text()  # SIGTERM lands while the engine import is under way
    rc = stop_process(d.proc, 30)
    log = d.log.read_text()
    assert rc == 0, log
    assert "terminate called" not in log and "Fatal Python error" not in log, log
    assert mark.read_text().splitlines()[-1] == "at exit, warm-up running: False", mark.read_text()


def test_sigterm_with_otlp_http_tracing_exits_0_every_time(
    tmp_path: Path, otlp_http_receiver: OtlpHttpReceiver  # noqa: F811 (fixture)
) -> None:
    for i in range(RUNS):
        d = start_daemon(tmp_path, env=_tracing_env(otlp_http_receiver))
        with grpc.insecure_channel(d.address) as ch:
            node_pb2_grpc.NodeServiceStub(ch).GetFeatures(features_pb2.GetFeaturesRequest(), timeout=20)
        rc = stop_process(d.proc, 30)
        log = d.log.read_text()
        assert rc == 0 and "terminate called" not in log, f"run {i}: exit {rc}\n{log}"
    assert len(otlp_http_receiver.bodies) >= RUNS  # each daemon flushed its spans at shutdown
