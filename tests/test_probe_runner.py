"""The probe runner: one worker thread for a whole round, a hung probe isolated by the watchdog, and
kernel config parses reused only while the file is unchanged."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from nodecompat.hostroot import HostRoot
from nodecompat.probes import parsecache
from nodecompat.probes.base import FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.kernel import KernelProbe
from nodecompat.probes.runner import ProbeRunner, _RoundHost

FIXTURES = Path(__file__).parent / "fixtures" / "hosts"


class ThreadNoting(Probe):
    features = ()

    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name  # type: ignore[misc]
        self.features = (FeatureInfo(f"{name}.x", frozenset({"attribute"})),)  # type: ignore[misc]
        self.seen = seen

    def discover(self, host: HostRoot) -> ProbeOutput:
        self.seen.append(threading.current_thread().name + f"#{threading.get_ident()}")
        out = ProbeOutput()
        out.features.add_attributes(f"{self.name}.x", {"v": self.name})
        return out


class Hanging(Probe):
    name = "hang"
    features = (FeatureInfo("hang.x", frozenset({"attribute"})),)
    timeout = 0.3

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen_thread = ""

    def discover(self, host: HostRoot) -> ProbeOutput:
        self.seen_thread = threading.current_thread().name + f"#{threading.get_ident()}"
        self.release.wait(30)
        return ProbeOutput()


def test_a_round_runs_every_probe_on_one_reused_worker(tmp_path: Path) -> None:
    seen: list[str] = []
    runner = ProbeRunner([ThreadNoting(f"p{i}", seen) for i in range(8)], HostRoot(tmp_path))
    try:
        before = threading.active_count()
        r1 = runner.run()
        r2 = runner.run()
        assert all(s.ok for s in r1.statuses + r2.statuses)
        assert r2.features.attributes["p7.x"].elements == {"v": "p7"}
        assert len(set(seen)) == 1  # 16 probe calls, one thread, reused across rounds
        assert threading.active_count() <= before + 1
    finally:
        runner.close()


def test_a_closed_runners_worker_serves_the_next_runner(tmp_path: Path) -> None:
    """probe_once-style use (a new runner per round) starts no thread per round: the worker a closed
    runner hands back runs the next runner's probes; an abandoned (hung) worker is never handed on."""
    seen: list[str] = []
    first = ProbeRunner([ThreadNoting("a", seen)], HostRoot(tmp_path))
    first.run()
    first.close()
    second = ProbeRunner([ThreadNoting("b", seen)], HostRoot(tmp_path))
    try:
        assert second.run().statuses[0].ok
    finally:
        second.close()
    assert len(seen) == 2 and seen[0] == seen[1]
    hang = Hanging()
    third = ProbeRunner([hang], HostRoot(tmp_path))
    try:
        assert third.run().statuses[0].timed_out
    finally:
        third.close()
    fourth = ProbeRunner([ThreadNoting("c", seen)], HostRoot(tmp_path))
    try:
        assert fourth.run().statuses[0].ok
        assert hang.seen_thread and seen[2] != hang.seen_thread  # the hung call's thread was not reused
    finally:
        hang.release.set()
        fourth.close()


def test_a_hung_probe_is_abandoned_and_the_probes_after_it_still_run(tmp_path: Path) -> None:
    seen: list[str] = []
    hang = Hanging()
    probes: list[Probe] = [ThreadNoting("a", seen), hang, ThreadNoting("z", seen)]
    runner = ProbeRunner(probes, HostRoot(tmp_path))
    try:
        rnd = runner.run()
        st = {s.name: s for s in rnd.statuses}
        assert st["hang"].timed_out and "timed out" in st["hang"].error
        assert st["a"].ok and st["z"].ok and "z.x" in rnd.features.attributes
        again = {s.name: s for s in runner.run().statuses}
        assert again["hang"].timed_out and "still hung" in again["hang"].error and again["z"].ok
        hang.release.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the abandoned call returns; the probe runs again
            third = {s.name: s for s in runner.run().statuses}
            if not third["hang"].timed_out:
                break
            time.sleep(0.05)
        hang.release.set()
        assert third["hang"].ok and third["z"].ok
    finally:
        hang.release.set()
        runner.close()


def test_kernel_config_parse_is_reused_until_the_file_changes(tmp_path: Path) -> None:
    root = tmp_path / "host"
    shutil.copytree(FIXTURES / "h100-server", root, symlinks=True)
    host = HostRoot(root)
    parsecache.clear()
    first = KernelProbe().discover(host).features.attributes["kernel.config"].elements
    assert first
    release = (root / "proc/sys/kernel/osrelease").read_text().strip()
    cfg = [p for p in (root / "boot" / f"config-{release}", root / "proc/config.gz") if p.exists()]
    assert cfg, "fixture has a kernel config"
    path = cfg[0]
    if path.suffix == ".gz":
        import gzip

        text = gzip.decompress(path.read_bytes()).decode()
        path.write_bytes(gzip.compress((text + "CONFIG_NODECOMPAT_TEST=y\n").encode()))
    else:
        path.write_text(path.read_text() + "CONFIG_NODECOMPAT_TEST=y\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = KernelProbe().discover(host).features.attributes["kernel.config"].elements
    assert second.get("NODECOMPAT_TEST") == "y" and "NODECOMPAT_TEST" not in first
    assert {k: v for k, v in second.items() if k != "NODECOMPAT_TEST"} == first


def test_kernel_config_parse_is_keyed_by_file_identity(tmp_path: Path) -> None:
    """Same inode, size and mtime: the parse is reused (proof that a later round does not re-parse);
    a new mtime: parsed again."""
    root = tmp_path / "host"
    shutil.copytree(FIXTURES / "plain-vm", root, symlinks=True)
    host = HostRoot(root)
    parsecache.clear()
    path = root / "etc" / "kconfig"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("CONFIG_A=y\nCONFIG_B=64\n")
    probe = KernelProbe(kconfig_file="/etc/kconfig")
    assert probe.discover(host).features.attributes["kernel.config"].elements == {"A": "y", "B": "64"}
    st = path.stat()
    with open(path, "r+") as f:  # same inode, same size, same mtime: the kept parse is served
        f.write("CONFIG_A=m\nCONFIG_B=64\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert probe.discover(host).features.attributes["kernel.config"].elements["A"] == "y"
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert probe.discover(host).features.attributes["kernel.config"].elements["A"] == "m"


@pytest.mark.parametrize("host", ["h100-server", "amd-mi300", "plain-vm"])
def test_round_resolution_memo_gives_hostroots_answers(host: str, tmp_path: Path) -> None:
    """_RoundHost.resolve (prefixes resolved once per round) == HostRoot.resolve, for every path of a
    fixture tree (sysfs symlinks included), through `..`, links out of the root, loops and missing parts."""
    root = tmp_path / "host"
    shutil.copytree(FIXTURES / host, root, symlinks=True)
    (root / "sys").mkdir(exist_ok=True)
    os.symlink("/etc", root / "sys" / "abs-link")  # re-rooted at the host root
    os.symlink("../../../../../../..", root / "sys" / "up-link")  # `..` stops at the root
    os.symlink("loop-b", root / "sys" / "loop-a")
    os.symlink("loop-a", root / "sys" / "loop-b")
    os.symlink("nowhere", root / "sys" / "dangling")
    paths = ["/", "/sys/abs-link/os-release", "/sys/up-link/sys", "/sys/loop-a", "/sys/loop-a/x", "/no/such",
             "/sys/no-such", "/sys/../sys/./abs-link/", "/sys/dangling", "/sys/dangling/x", "/proc/cpuinfo/child"]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            host_path = "/" + os.path.relpath(os.path.join(dirpath, name), root)
            paths += [host_path, host_path + "/..", host_path + "/missing"]
    plain = HostRoot(root)
    memo = _RoundHost.over(plain)
    for p in paths:
        for strict in (False, True):
            try:
                want: object = plain.resolve(p, strict=strict)
            except OSError as exc:
                want = type(exc)
            try:
                got: object = memo.resolve(p, strict=strict)
            except OSError as exc:
                got = type(exc)
            assert got == want, (p, strict)
