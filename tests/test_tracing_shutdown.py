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

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from support_daemon import start_daemon, stop_process

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


@pytest.fixture()
def otlp_http() -> Iterator[tuple[str, list[bytes]]]:
    """A real OTLP/http trace receiver (POST /v1/traces answered 200); yields (endpoint, bodies)."""
    bodies: list[bytes] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", bodies
    finally:
        srv.shutdown()
        srv.server_close()


def _tracing_env(endpoint: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100", "PYTHONFAULTHANDLER": "1"}


def test_exit_waits_for_the_warm_up_import_before_the_interpreter_finalizes(
    tmp_path: Path, otlp_http: tuple[str, list[bytes]]
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    mark = tmp_path / "mark.txt"
    import os

    env = {**_tracing_env(otlp_http[0]), "NC_TEST_MARK": str(mark), "NC_TEST_SLOW_IMPORT": str(SLOW_IMPORT),
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
    tmp_path: Path, otlp_http: tuple[str, list[bytes]]
) -> None:
    endpoint, bodies = otlp_http
    for i in range(RUNS):
        d = start_daemon(tmp_path, env=_tracing_env(endpoint))
        with grpc.insecure_channel(d.address) as ch:
            node_pb2_grpc.NodeServiceStub(ch).GetFeatures(features_pb2.GetFeaturesRequest(), timeout=20)
        rc = stop_process(d.proc, 30)
        log = d.log.read_text()
        assert rc == 0 and "terminate called" not in log, f"run {i}: exit {rc}\n{log}"
    assert len(bodies) >= RUNS  # each daemon flushed its spans at shutdown
