"""The node daemon's first probe round, run by a child process on the other core while the parent starts
gRPC (issue 11: `nodecompat serve` exec -> health SERVING within 6x a bare interpreter start).

Start-up is two independent jobs of about the same size: importing gRPC, asyncio and protobuf and
starting the server (~70 ms), and importing the probe modules and running the first round (~40 ms).
One interpreter does them one after the other (the GIL: a thread would not overlap them), so
`nodecompat serve` forks once, before gRPC is imported and before any thread exists: the child loads the
probes, runs one round with the daemon's settings (the same ProbeRunner, host root, probe set, node
name, sysctl names and timeouts) and sends the ProbeRound back through a pipe (pickle: both ends are
this program, forked from one image, so nothing untrusted is unpickled), then exits. The parent stores
that round as its first one, so SERVING still means "the first probe round is stored", and loads the
probes itself on first use (the warm-up after SERVING, the next round, a refresh, the feature catalog).

Hand-written on os.fork and a pipe: multiprocessing (and concurrent.futures' process pool) import more
than the whole round costs and start the child by re-importing or by a fork server; a plain fork of
this small, thread-free process is ~1 ms.

Whenever the child's round is not a plain success the parent runs the first round itself, as without
the child: the child exited without an answer (a crash, a signal), the answer is not a ProbeRound, no
answer within FIRST_ROUND_WAIT, or a probe timed out. The last keeps the runner's guarantee that a
probe whose call hung is not started again while that call runs ("still hung" in later rounds): only
the runner that abandoned the call knows it, so the hung call must be the parent's.

The child ends itself as soon as nobody can read its answer (_exit_when_unread): a parent killed
outright (SIGKILL, the OOM killer) can neither kill nor reap it, and an orphaned prober would otherwise
run its whole round alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from nodecompat.probes.base import Probe
    from nodecompat.probes.probe_round import ProbeRound
    from nodecompat.probes.registry import LoadError
    from nodecompat.probes.runner import ProbeRunner

log = logging.getLogger(__name__)

REAP_WAIT = 2.0  # s a reap waits for the child to end
FIRST_ROUND_WAIT = 300.0  # s the parent waits for the child's round (16 probes x their 10 s timeouts < 200 s)
_READ_CHUNK = 1 << 20


def configured_probes(only: Iterable[str] | None, node_name: str,
                      sysctl: Iterable[str]) -> tuple[list[Probe], list[LoadError]]:
    """load_probes(only), with the daemon's settings applied: the system probe reports `node_name` as
    system.name nodename, the sysctl probe also reads the `sysctl` names (serve --node-name, --sysctl)."""
    from nodecompat.probes.registry import load_probes

    probes, errors = load_probes(only)
    extra = list(sysctl)
    for p in probes:
        if hasattr(p, "node_name") and node_name:
            p.node_name = node_name
        if hasattr(p, "sysctl_extra") and extra:
            p.sysctl_extra = list(extra)
    return probes, errors


class ForkedRound:
    """A first probe round being run by a forked child; result() is the round, or None (probe yourself)."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self._fd: int | None = fd
        self._lock = threading.Lock()  # result(): the pipe is read once
        self._pid_lock = threading.Lock()  # the child is signalled only until it is reaped (its pid reused)
        self._reaped = False
        self._cancelled = False  # cancel() was called: a result() under way returns None quietly

    @classmethod
    def start(cls, host_root: str, only: Iterable[str] | None, node_name: str, sysctl: Iterable[str],
              timeout: float | None) -> ForkedRound | None:
        """Fork the child that runs the round; None where forking is not safe or possible: gRPC already
        imported (its core does not survive a fork), other threads running (a lock they hold would stay
        held in the child), or no os.fork."""
        if "grpc" in sys.modules or threading.active_count() > 1 or not hasattr(os, "fork"):
            return None
        only = list(only) if only is not None else None
        sysctl = list(sysctl)
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            return None
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            _child(write_fd, host_root, only, node_name, sysctl, timeout)
        os.close(write_fd)
        return cls(pid, read_fd)

    def result(self, wait: float = FIRST_ROUND_WAIT) -> ProbeRound | None:
        """The child's round (once; later calls: None). Reads until the child closes the pipe, at most
        `wait` seconds, then reaps it; None whenever the round is not usable as it is (logged)."""
        from nodecompat.probes.probe_round import ProbeRound

        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return None
            started = time.monotonic()
            chunks: list[bytes] = []
            ended = False
            try:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                while (left := started + wait - time.monotonic()) > 0:
                    if not poller.poll(left * 1000):
                        continue
                    chunk = os.read(fd, _READ_CHUNK)
                    if not chunk:
                        ended = True
                        break
                    chunks.append(chunk)
            finally:
                os.close(fd)
            status = self._reap(kill=not ended)
            took = time.monotonic() - started
            if not ended:
                log.warning("the start-up prober (pid %d) sent no round within %g s: probing here", self.pid, wait)
                return None
            if self._cancelled:  # the daemon is stopping: nobody probes
                log.debug("the start-up prober (pid %d) was cancelled (%s)", self.pid, status)
                return None
            if not chunks:  # a probe timed out, an error, a signal: see the module docstring
                log.info("the start-up prober (pid %d) sent no round (%s): probing here", self.pid, status)
                return None
            try:
                rnd = pickle.loads(b"".join(chunks))
            except Exception as exc:
                log.warning("the start-up prober's round did not load (%s): probing here", exc)
                return None
            if not isinstance(rnd, ProbeRound):
                log.warning("the start-up prober sent a %s, not a ProbeRound: probing here", type(rnd).__name__)
                return None
            log.debug("first probe round from the start-up prober (pid %d), %.1f ms after the daemon asked",
                      self.pid, took * 1000)
            return rnd

    def cancel(self) -> None:
        """Kill the child if it has not been reaped (a result() under way then sees the pipe close and
        returns None)."""
        self._cancelled = True
        self._reap(kill=True)

    def _reap(self, kill: bool) -> str:
        """Reap the child (after SIGKILL when `kill`), waiting at most REAP_WAIT; how it ended. A child
        still running then (stuck in an uninterruptible read, it dies only when the read ends) is waited for
        by a daemon thread, so it never stays a zombie for the daemon's life (its pid is not reused before)."""
        with self._pid_lock:
            if self._reaped:
                return "already reaped"
            try:
                if kill:
                    os.kill(self.pid, signal.SIGKILL)
                deadline = time.monotonic() + REAP_WAIT
                while True:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                    if pid:
                        self._reaped = True
                        if os.WIFSIGNALED(status):
                            return f"killed by signal {os.WTERMSIG(status)}"
                        return f"exit status {os.waitstatus_to_exitcode(status)}"
                    if time.monotonic() >= deadline:
                        self._reaped = True  # the waiter below owns it now: never signal that pid again
                        threading.Thread(target=_wait_for, args=(self.pid,), name="first-round-reaper",
                                         daemon=True).start()
                        return "still running"
                    time.sleep(0.001)
            except (ProcessLookupError, ChildProcessError):
                self._reaped = True
                return "gone"


def _wait_for(pid: int) -> None:
    """Block until `pid` (our child) exits and reap it; nothing else waits for it any more."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _child(write_fd: int, host_root: str, only: list[str] | None, node_name: str, sysctl: list[str],
           timeout: float | None) -> NoReturn:
    """Run the round and write it (or nothing: see the module docstring) to write_fd; exit without
    running the parent's exit handlers or flushing its buffers (os._exit)."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
        threading.Thread(target=_exit_when_unread, args=(write_fd,), daemon=True).start()
        from nodecompat.hostroot import HostRoot
        from nodecompat.probes.runner import ProbeRunner

        probes, errors = configured_probes(only, node_name, sysctl)
        runner = ProbeRunner(probes, HostRoot(Path(host_root)), errors, timeout=timeout)
        # On this thread (no hand-off to a worker: issue 11, the first round). A call that hangs past its
        # timeout: the watchdog calls _no_answer on its thread, which ends the child without an answer,
        # as a round with a timed-out probe would (the parent probes itself).
        rnd = runner.run_here(_no_answer)
        if rnd is not None and not any(st.timed_out for st in rnd.statuses):
            data = memoryview(pickle.dumps(rnd, protocol=pickle.HIGHEST_PROTOCOL))
            while data:
                data = data[os.write(write_fd, data):]
    except BaseException:  # the parent probes itself; a broken pipe means the parent is gone
        code = 1
    finally:
        os._exit(code)


def _no_answer(_finish: object) -> NoReturn:
    """In the child, on the watchdog's thread: a probe call hung past its timeout (ProbeRunner.run_here's
    on_hang). Only the runner that abandoned the call can say "still hung" later, so the child sends
    nothing and ends at once (its thread is stuck in the call); the parent runs the first round itself."""
    os._exit(1)


def _exit_when_unread(write_fd: int) -> None:
    """In the child: end it at once when nobody can read its answer any more — the parent died (SIGKILL,
    the OOM killer, a crash: nothing reaps or kills the child then) or gave up on it (result() closed
    the read end). Linux reports POLLERR on a pipe's write end once it has no reader (fs/pipe.c
    pipe_poll); a thread blocked in poll holds no GIL. Without this an orphaned prober ran its whole
    round (up to every probe's timeout) after its parent was gone."""
    poller = select.poll()
    poller.register(write_fd, 0)  # POLLERR and POLLHUP are always reported
    while True:
        for _fd, ev in poller.poll():
            if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                os._exit(1)


class StartupRunner:
    """What the daemon's FeatureCache and NodeService use of a ProbeRunner (run(), probes), for a daemon
    whose first round comes from a ForkedRound: the first run() is that round (or, when it is None, a
    round of its own), and the probes are loaded on first use, not at start-up."""

    def __init__(self, make: Callable[[], ProbeRunner], first: ForkedRound | None) -> None:
        self._make = make
        self._first = first
        self._runner: ProbeRunner | None = None
        self._lock = threading.Lock()
        self._cancelled = False

    def runner(self) -> ProbeRunner:
        """The daemon's ProbeRunner, its probes loaded on the first call."""
        with self._lock:
            if self._runner is None:
                self._runner = self._make()
            return self._runner

    @property
    def probes(self) -> list[Probe]:
        return self.runner().probes

    def run(self) -> ProbeRound:
        """The child's round the first time (FeatureCache runs one round at a time), else a new round."""
        return self._first_round() or self.runner().run()

    def run_here(self, on_hang: Callable[[Callable[[], ProbeRound | None]], None]) -> ProbeRound | None:
        """run(), with the daemon's own rounds run on the calling thread (ProbeRunner.run_here)."""
        return self._first_round() or self.runner().run_here(on_hang)

    def _first_round(self) -> ProbeRound | None:
        """The child's round, once; None when it is gone or sent none (the caller then probes here)."""
        first = self._first
        if first is not None:
            rnd = first.result()
            self._first = None
            if rnd is not None:
                return rnd
            if self._cancelled:  # no round of our own while the daemon stops
                raise RuntimeError("the daemon stopped before its first probe round")
        return None

    def cancel_first(self) -> None:
        """Kill the child still running the first round (the daemon stops before it answered)."""
        self._cancelled = True
        first = self._first
        if first is not None:
            first.cancel()
