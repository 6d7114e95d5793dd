"""The webhook's parse workers and its shutdown (server/webhook/webhook_parse.py).

A container runtime or a terminal signals the whole process group. The parse workers must leave those
signals to the webhook (a worker killed under it turns the next large review into a 503), and the webhook
must exit 0 with a clean log: CPython 3.11's concurrent/futures/process.py _python_exit writes to the
wake-up pipe of an executor whose manager thread already closed it ("OSError: [Errno 9] Bad file
descriptor", seen in `make readme-check`) unless the pool was joined before exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from support_daemon import free_port
from support_fleet import make_certs
from test_webhook_limits import _big_review


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _started(pid: int) -> bool:
    """The worker has run its initializer (or, without one, has been up 10 s): SIGTERM's bit (15) in its
    ignored-signals mask, /proc/PID/status SigIgn (proc(5))."""
    status = Path(f"/proc/{pid}/status").read_text()
    ign = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    return bool(ign & (1 << (signal.SIGTERM - 1))) or time.time() - _start_time(pid) > 10


def _start_time(pid: int) -> float:
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    stat = Path("/proc/stat").read_text().splitlines()
    boot = next(float(line.split()[1]) for line in stat if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _start(tmp: Path) -> tuple[subprocess.Popen[bytes], str, requests.Session, list[int], Path]:
    certs = make_certs(tmp / "pki")
    port = free_port()
    log = tmp / "webhook.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodecompat.clients.cli", "webhook", "--listen", f"127.0.0.1:{port}",
         "--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--aggregator", f"127.0.0.1:{free_port()}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    s = requests.Session()
    s.verify = str(certs.ca)
    s.trust_env = False
    url = f"https://127.0.0.1:{port}"
    end = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < end and proc.poll() is None:
        try:
            ready = s.get(f"{url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            ready = False
        workers = [c for c in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        if ready and workers and all(_started(w) for w in workers):
            return proc, url, s, workers, log
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"webhook or its parse worker not up: {log.read_text()}")


def _stop_group(proc: subprocess.Popen[bytes]) -> int:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_signal_to_a_parse_worker_is_left_to_the_webhook(tmp_path: Path) -> None:
    proc, url, s, workers, log = _start(tmp_path)
    try:
        for w in workers:
            os.kill(w, signal.SIGTERM)  # what each member of the group gets from `kill -- -PGID`
        time.sleep(0.5)
        assert all(Path(f"/proc/{w}").exists() for w in workers), "a parse worker died of SIGTERM"
        body = json.dumps(_big_review("big")).encode()
        r = s.post(f"{url}/validate?timeout=10s", data=body, timeout=60, headers={"Content-Type": "application/json"})
        # parsed by the same worker: answered (the image's registry is not allowed -> denied), not 503
        assert r.status_code == 200, r.text[:300]
        assert r.json()["response"]["allowed"] is False
    finally:
        rc = _stop_group(proc)
    assert rc == 0, log.read_text()


@pytest.mark.parametrize("attempt", range(3))
def test_sigterm_to_the_process_group_exits_0_with_a_clean_log(tmp_path: Path, attempt: int) -> None:
    proc, _url, _s, workers, log = _start(tmp_path)
    time.sleep(0.1 * attempt)
    assert _stop_group(proc) == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text and "Bad file descriptor" not in text, text
    end = time.monotonic() + 10
    while time.monotonic() < end and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{w}").exists() for w in workers), "a parse worker outlived the webhook"
