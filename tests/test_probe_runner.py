"""The probe runner: one worker thread for a whole round, a hung probe isolated by the watchdog, and
kernel config parses reused only while the file is unchanged."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nodecompat.hostroot import HostPathEscape, HostRoot
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


def _hostile_links(root: Path) -> list[str]:
    """Links out of the root, up past it, loops, dangling; returns extra paths worth asking for."""
    (root / "sys").mkdir(exist_ok=True)
    os.symlink("/etc", root / "sys" / "abs-link")  # re-rooted at the host root
    os.symlink("../../../../../../..", root / "sys" / "up-link")  # `..` stops at the root
    os.symlink("loop-b", root / "sys" / "loop-a")
    os.symlink("loop-a", root / "sys" / "loop-b")
    os.symlink("nowhere", root / "sys" / "dangling")
    os.symlink("/", root / "sys" / "to-root")
    os.symlink("..", root / "sys" / "dot-dot")
    os.symlink("/etc/os-release", root / "sys" / "abs-file")
    os.symlink("/../../../../etc/../etc/os-release", root / "sys" / "abs-climb")
    return ["/", "", "sys", "/sys/abs-link/os-release", "/sys/up-link/sys", "/sys/loop-a", "/sys/loop-a/x",
            "/no/such", "/sys/no-such", "/sys/../sys/./abs-link/", "/sys/dangling", "/sys/dangling/x",
            "/proc/cpuinfo/child", "/sys/to-root/etc/os-release", "/sys/dot-dot/etc/os-release", "/sys/abs-file",
            "/sys/abs-climb", "/sys/abs-file/", "/etc/os-release/", "/sys/to-root/..", "/..", "/sys/dot-dot/.."]


def _every_path(root: Path, extra: list[str]) -> list[str]:
    paths = list(extra)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            host_path = "/" + os.path.relpath(os.path.join(dirpath, name), root)
            paths += [host_path, host_path + "/..", host_path + "/missing", host_path + "/"]
    return paths


def _answers(host: HostRoot, p: str) -> tuple[object, ...]:
    def st() -> object:
        try:
            s = host.stat(p)
        except OSError as exc:
            return type(exc)
        return (s.st_ino, s.st_mode)

    def hr() -> object:
        try:
            return host.host_resolve(p, strict=True)
        except OSError as exc:
            return type(exc)

    def confined(within: str) -> object:
        try:
            s = host.stat(p, within=within)
        except HostPathEscape as exc:
            return str(exc)  # the sentence a probe status shows
        except OSError as exc:
            return type(exc), exc.errno
        return (s.st_ino, host.read_bytes(p, within=within), host.read_text(p, within=within))

    return (host.read_bytes(p), host.read_text(p), host.read_line(p), host.listdir(p), host.exists(p),
            host.is_dir(p), host.is_file(p), host.link_target_name(p), st(), hr(),
            *(confined(w) for w in ("/sys", "/etc", "/sys/abs-link", "/sys/bus/", "/no/such", "/")))


@pytest.fixture(params=[True, False], ids=["openat2", "held-directories"])
def openat2(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways a round resolves: openat2(RESOLVE_IN_ROOT) and, where the kernel lacks it, the walk
    through directory descriptors held for the round."""
    from nodecompat.probes import root_resolve

    monkeypatch.setattr(root_resolve, "USE_OPENAT2", request.param)
    return bool(request.param)


HostTree = tuple[Path, list[str], list[tuple[object, ...]]]


@pytest.fixture(scope="module")
def walked_tree(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], HostTree]:
    """host -> (a copy of its fixture tree with _hostile_links, every path worth asking, HostRoot's answer
    for each path), made once per host for the module: HostRoot's component walk does not depend on
    root_resolve.USE_OPENAT2, and nothing writes to the copy, so both `openat2` cases compare against the
    same answers (their walk is most of the test's time) instead of walking a fresh copy each."""
    made: dict[str, HostTree] = {}

    def get(host: str) -> HostTree:
        if host not in made:
            root = tmp_path_factory.mktemp(f"walked-{host}") / "host"
            shutil.copytree(FIXTURES / host, root, symlinks=True)
            paths = _every_path(root, _hostile_links(root))
            plain = HostRoot(root)
            made[host] = (root, paths, [_answers(plain, p) for p in paths])
        return made[host]

    return get


@pytest.mark.parametrize("host", ["h100-server", "amd-mi300", "plain-vm"])
def test_round_reads_through_held_directories_give_hostroots_answers(
    host: str, walked_tree: Callable[[str], HostTree], openat2: bool
) -> None:
    """RoundHost (openat2 with RESOLVE_IN_ROOT, or directories opened once per round and files opened
    relative to them with O_NOFOLLOW) answers every read exactly as HostRoot's component walk does,
    for every path of a fixture tree (sysfs links included), through `..`, links out of the root,
    loops, dangling and missing parts; each path asked twice (the second answer from the memo) and in
    one shared round."""
    root, paths, wants = walked_tree(host)
    memo = _RoundHost.over(HostRoot(root))
    for p, want in zip(paths, wants, strict=True):
        assert _answers(memo, p) == want, p
        assert _answers(memo, p) == want, p
    assert memo.read_text("/sys/abs-link/os-release") == (root / "etc" / "os-release").read_text()


def test_a_link_swapped_in_after_its_directory_was_opened_is_not_followed(tmp_path: Path, openat2: bool) -> None:
    """The round holds a directory's descriptor; a file replaced by a link out of the root afterwards
    is resolved as the host root's (re-rooted), never opened through the link, and a directory
    replaced by a link to one outside is not followed either (the held descriptor is the old one)."""
    root = tmp_path / "root"
    (root / "sys" / "d").mkdir(parents=True)
    (root / "sys" / "d" / "v").write_text("inside\n")
    (root / "sys" / "d" / "w").write_text("inside-w\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "v").write_text("SECRET\n")
    (outside / "w").write_text("SECRET\n")
    memo = _RoundHost.over(HostRoot(root))
    assert memo.read_line("/sys/d/v") == "inside"
    os.unlink(root / "sys" / "d" / "w")
    os.symlink(outside / "w", root / "sys" / "d" / "w")  # absolute target: means <root>/<outside>/w
    assert memo.read_line("/sys/d/w") is None
    os.rename(root / "sys" / "d", root / "sys" / "old")
    os.symlink(outside, root / "sys" / "d")
    fresh = _RoundHost.over(HostRoot(root))
    assert fresh.read_line("/sys/d/v") is None  # a new round re-roots the link: <root>/<outside> is not there
    assert "SECRET" not in repr([memo.read_bytes("/sys/d/v"), fresh.listdir("/sys/d"), memo.listdir("/sys/d")])


def test_a_round_holds_a_bounded_number_of_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_HELD_DIRS the round still answers (through HostRoot's walk); descriptors are closed
    once the round's host is dropped."""
    from nodecompat.probes import root_resolve

    monkeypatch.setattr(root_resolve, "USE_OPENAT2", False)  # openat2 holds none
    root = tmp_path / "root"
    n = root_resolve.MAX_HELD_DIRS + 20
    for i in range(n):
        (root / "d" / str(i)).mkdir(parents=True)
        (root / "d" / str(i) / "f").write_text(f"{i}\n")
    before = len(os.listdir("/proc/self/fd"))
    memo = _RoundHost.over(HostRoot(root))
    assert [memo.read_line(f"/d/{i}/f") for i in range(n)] == [str(i) for i in range(n)]
    assert len(os.listdir("/proc/self/fd")) - before <= root_resolve.MAX_HELD_DIRS
    del memo
    assert len(os.listdir("/proc/self/fd")) - before <= 0


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


@pytest.mark.parametrize("host", sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()))
def test_a_round_delivers_what_each_probe_finds_through_hostroot(host: str) -> None:
    """Every fixture host: the round (shared RoundHost, held directory descriptors, one worker) gives
    the same features and notes as each registered probe's discover() on a plain HostRoot."""
    from nodecompat.features import Features
    from nodecompat.probes.registry import load_probes
    from nodecompat.probes.runner import probe_once

    plain = HostRoot(FIXTURES / host)
    rnd = probe_once(plain)
    probes, _ = load_probes()
    want = Features()
    notes = {}
    for p in probes:
        out = type(p)().discover(plain)
        want.merge(out.features.subset(p.feature_names()))
        notes[p.name] = out.notes
    assert rnd.features == want
    assert {s.name: s.notes for s in rnd.statuses if s.ok} == notes


def test_round_reads_whole_files_of_every_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A round's read is HostRoot's whole-file read: procfs files (size 0, several reads), sysfs
    attributes, a file larger than one read chunk; over the byte bound: unreadable (None)."""
    from nodecompat.probes import bounded_read

    slash = HostRoot(Path("/"))
    memo = _RoundHost.over(slash)
    for p in ("/proc/cpuinfo", "/proc/sys/kernel/osrelease", "/sys/devices/system/cpu/online", "/etc/os-release",
              "/proc/crypto"):  # a procfs file (size 0) longer than the round's first read (~11 KiB)
        assert memo.read_bytes(p) == slash.read_bytes(p), p
    root = tmp_path / "root"
    root.mkdir()
    big = bytes(range(256)) * 1200  # 300 KiB: several chunks
    (root / "big").write_bytes(big)
    (root / "empty").write_bytes(b"")
    host = HostRoot(root)
    assert _RoundHost.over(host).read_bytes("/big") == big == host.read_bytes("/big")
    assert _RoundHost.over(host).read_bytes("/empty") == b""
    monkeypatch.setattr(bounded_read, "MAX_READ_BYTES", len(big) - 1)
    assert _RoundHost.over(host).read_bytes("/big") is None
