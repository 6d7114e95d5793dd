"""A long-lived runner reuses a probe's last result while a replay of its host operations answers the
same (probes/probe_memo.py): real fixture trees copied to tmp, real probes, discover() calls counted."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes import parsecache, probe_memo
from nodecompat.probes.base import FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.probe_round import ProbeRound
from nodecompat.probes.registry import load_probes
from nodecompat.probes.runner import ProbeRunner

FIXTURES = Path(__file__).parent / "fixtures" / "hosts"


def _tree(tmp_path: Path, name: str = "h100-server") -> Path:
    root = tmp_path / "host"
    shutil.copytree(FIXTURES / name, root, symlinks=True)
    return root


class Counted:
    """The registered probes, each discover() call counted by probe name."""

    def __init__(self) -> None:
        self.probes, errors = load_probes()
        assert not errors
        self.calls: dict[str, int] = {p.name: 0 for p in self.probes}
        for p in self.probes:
            p.discover = self._counting(p.name, p.discover)  # type: ignore[method-assign]

    def _counting(self, name: str, discover: Callable[[HostRoot], ProbeOutput]) -> Callable[[HostRoot], ProbeOutput]:
        def counted(host: HostRoot) -> ProbeOutput:
            self.calls[name] += 1
            return discover(host)

        return counted

    def ran(self, action: Callable[[], ProbeRound]) -> tuple[ProbeRound, set[str]]:
        """The round `action` runs and the names of the probes whose discover() it called."""
        before = dict(self.calls)
        r = action()
        return r, {n for n, c in self.calls.items() if c != before[n]}


def _fresh(root: Path) -> ProbeRound:
    probes, _ = load_probes()
    return ProbeRunner(probes, HostRoot(root), memoize=False).run()


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_an_unchanged_host_reuses_every_memoizable_result_equal_to_a_fresh_round(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    parsecache.clear()
    c = Counted()
    runner = ProbeRunner(c.probes, HostRoot(root))
    try:
        r1, ran1 = c.ran(runner.run)
        r2, ran2 = c.ran(runner.run)
        r3, ran3 = c.ran(runner.run)
    finally:
        runner.close()
    memoizable = {p.name for p in c.probes if type(p).memoizable}
    assert ran1 == set(c.calls)
    assert memoizable == set(c.calls)  # every built-in probe, audited (probes/probe_memo.py)
    # discover() not called, local's included: h100-server's features.d/site has an expiry-time line, long
    # past (an input asked again each round: which expiry times have passed, probes/local.py)
    assert "expiry-time" in (root / "etc/kubernetes/node-feature-discovery/features.d/site").read_text()
    assert ran2 == ran3 == set()
    assert {s.name for s in r2.statuses if s.reused} == memoizable
    fresh = _fresh(root)
    for r in (r2, r3):
        assert r.features == fresh.features == r1.features
        assert [(s.name, s.ok, s.error, s.notes, s.features) for s in r.statuses] == [
            (s.name, s.ok, s.error, s.notes, s.features) for s in fresh.statuses
        ]
    # the same objects: the kept output's features moved into each round, not parsed again
    assert r3.features.attributes["kernel.config"] is r1.features.attributes["kernel.config"]
    assert r3.features.instances["pci.device"] is r1.features.instances["pci.device"]


@pytest.mark.parametrize(
    "change, probe, check",
    [
        (  # unload a module: kernel.loadedmodule loses it
            lambda root: _unload(root, "nvidia_uvm"),
            "kernel",
            lambda f: "nvidia_uvm" not in f.flags["kernel.loadedmodule"].elements,
        ),
        (  # a PCI function's device id changes: pci.device and gpu.device (list_pci_devices, shared per round)
            lambda root: (root / "sys/devices/pci0000:18/0000:18:00.0/device").write_text("0x2331\n"),
            "pci",
            lambda f: any(i.attributes.get("device") == "2331" for i in f.instances["pci.device"].elements),
        ),
        (  # a kernel option changes (a new mtime: the config's parse is keyed by identity, parsecache.py)
            lambda root: _set_kconfig(root, "CONFIG_NODECOMPAT_MEMO_TEST=y\n"),
            "kernel",
            lambda f: f.attributes["kernel.config"].elements.get("NODECOMPAT_MEMO_TEST") == "y",
        ),
        (  # a hugepage pool is resized
            lambda root: _more_hugepages(root),
            "hugepages",
            lambda f: "7" in f.attributes["memory.hugepages"].elements.values(),
        ),
    ],
    ids=["module-unloaded", "pci-device-file", "kernel-option", "hugepages"],
)
def test_a_changed_host_file_is_seen_by_the_next_round(
    tmp_path: Path, change: Callable[[Path], object], probe: str, check: Callable[[Features], bool]
) -> None:
    root = _tree(tmp_path)
    parsecache.clear()
    c = Counted()
    runner = ProbeRunner(c.probes, HostRoot(root))
    try:
        r1, _ = c.ran(runner.run)
        assert not check(r1.features)
        c.ran(runner.run)  # a steady round: served from the memo
        change(root)
        r3, ran3 = c.ran(runner.run)
        r4, ran4 = c.ran(runner.run)
    finally:
        runner.close()
    assert probe in ran3, "the changed input must make the probe run again"
    assert check(r3.features), "a stale result was served after the host changed"
    assert r3.features == _fresh(root).features
    assert probe not in ran4 and check(r4.features)  # recorded anew: the next steady round reuses it
    if probe == "pci":  # gpu reads the same functions through the round's shared list
        assert "gpu" in ran3


def _unload(root: Path, module: str) -> None:
    path = root / "proc/modules"
    path.write_text("".join(ln for ln in path.read_text().splitlines(True) if not ln.startswith(module + " ")))


def _set_kconfig(root: Path, extra: str) -> None:
    release = (root / "proc/sys/kernel/osrelease").read_text().strip()
    path = root / "boot" / f"config-{release}"
    path.write_text(path.read_text() + extra)
    _touch_later(path)


def _more_hugepages(root: Path) -> None:
    pool = root / "sys/kernel/mm/hugepages"
    sizes = sorted(pool.iterdir())
    assert sizes, "fixture has hugepage pools"
    (sizes[0] / "nr_hugepages").write_text("7\n")


class ReadsOneFile(Probe):
    """A test probe reading one host file through the host root; memoizable unless told otherwise."""

    name = "readsone"
    features = (FeatureInfo("readsone.file", frozenset({"attribute"})),)

    def __init__(self, path: str, memoizable: bool = True, replayable: bool = True) -> None:
        self.path = path
        self.calls = 0
        self.replayable = replayable
        type(self).memoizable = memoizable  # a class per test below

    def discover(self, host: HostRoot) -> ProbeOutput:
        self.calls += 1
        if not self.replayable:
            probe_memo.not_replayable(host, "a source a replay cannot ask again")
        raw = host.read_bytes(self.path)
        out = ProbeOutput()
        out.features.add_attributes("readsone.file", {"size": str(len(raw or b""))})
        return out


def _rounds(probe: ReadsOneFile, root: Path, n: int) -> list[ProbeRound]:
    runner = ProbeRunner([probe], HostRoot(root))
    try:
        return [runner.run() for _ in range(n)]
    finally:
        runner.close()


def test_a_probe_that_is_not_memoizable_always_runs(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")

    class Memoizable(ReadsOneFile):
        pass

    class NotMemoizable(ReadsOneFile):
        pass

    class NotReplayable(ReadsOneFile):
        pass

    kept = Memoizable("/f")
    assert [r.statuses[0].reused for r in _rounds(kept, tmp_path, 3)] == [False, True, True]
    assert kept.calls == 1
    never = NotMemoizable("/f", memoizable=False)
    assert [r.statuses[0].reused for r in _rounds(never, tmp_path, 3)] == [False, False, False]
    assert never.calls == 3
    refused = NotReplayable("/f", replayable=False)  # memoizable class, but used a non-host source
    _rounds(refused, tmp_path, 3)
    assert refused.calls == 3
    assert Probe.memoizable is False  # a plugin nobody audited runs every round


def test_a_memo_over_its_byte_bound_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * (probe_memo.MAX_LOG_BYTES + 1))
    (tmp_path / "small").write_bytes(b"x" * 1000)

    class Big(ReadsOneFile):
        pass

    big, small = Big("/big"), Big("/small")
    rounds = _rounds(big, tmp_path, 3)
    assert big.calls == 3 and not any(r.statuses[0].reused for r in rounds)
    assert rounds[-1].features.attributes["readsone.file"].elements["size"] == str(probe_memo.MAX_LOG_BYTES + 1)
    _rounds(small, tmp_path, 3)
    assert small.calls == 1


def test_a_failed_probe_is_not_memoized(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")

    class Failing(ReadsOneFile):
        def discover(self, host: HostRoot) -> ProbeOutput:
            super().discover(host)
            raise RuntimeError("boom")

    p = Failing("/f")
    rounds = _rounds(p, tmp_path, 3)
    assert p.calls == 3
    assert all(not r.statuses[0].ok and r.statuses[0].error == "RuntimeError: boom" for r in rounds)


def test_an_input_outside_the_tree_is_asked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """system.name comes from $NODE_NAME: logged with probe_memo.noted, so a change is seen."""
    root = _tree(tmp_path)
    monkeypatch.setenv("NODE_NAME", "node-a")
    probes, _ = load_probes(["system"])
    runner = ProbeRunner(probes, HostRoot(root))
    try:
        r1, r2 = runner.run(), runner.run()
        monkeypatch.setenv("NODE_NAME", "node-b")
        r3 = runner.run()
    finally:
        runner.close()
    assert r2.statuses[0].reused and not r3.statuses[0].reused
    assert r1.features.attributes["system.name"].elements == {"nodename": "node-a"}
    assert r3.features.attributes["system.name"].elements == {"nodename": "node-b"}


def test_probe_once_keeps_no_memo(tmp_path: Path) -> None:
    """A one-round runner (probe_once, the CLI) logs nothing; nothing hidden outlives it."""
    from nodecompat.probes.runner import probe_once

    root = _tree(tmp_path)
    r = probe_once(HostRoot(root))
    assert not any(s.reused for s in r.statuses)
    assert r.features == _fresh(root).features


def test_a_feature_file_with_an_expiry_time_is_reused_until_the_time_passes(tmp_path: Path) -> None:
    """local's lines under "# +expiry-time" count until that time (NFD source/local/local.go,
    parseFeatureFile). Which expiry times have passed is an input the memo asks again each round: the
    result is reused while none passes, and the round after one passes runs local, which drops the lines
    (a memo reusing it blindly would keep publishing "b" past its time). A file's change is still seen."""
    root = _tree(tmp_path, "plain-vm")
    fd = root / HostRoot().features_d.lstrip("/")
    fd.mkdir(parents=True, exist_ok=True)
    (fd / "plain").write_text("a=1\n")
    probes, _ = load_probes(["local"])
    runner = ProbeRunner(probes, HostRoot(root))
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    try:
        reused = [runner.run().statuses[0].reused for _ in range(2)]
        (fd / "timed").write_text("# +expiry-time=2999-01-01T00:00:00Z\nb=2\n")
        far = [runner.run() for _ in range(2)]
        (fd / "timed").write_text(f"c=3\n# +expiry-time={soon.isoformat()}\nb=2\n")
        before = [runner.run() for _ in range(2)]
        time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
        after = [runner.run() for _ in range(2)]
    finally:
        runner.close()
    assert reused == [False, True]
    assert [r.statuses[0].reused for r in far] == [False, True]  # a new file seen, then reused
    assert far[-1].features.attributes["local.feature"].elements == {"a": "1", "b": "2"}
    assert [r.statuses[0].reused for r in before] == [False, True]
    assert before[-1].features.attributes["local.feature"].elements == {"a": "1", "b": "2", "c": "3"}
    assert after[0].statuses[0].reused is False, "the expiry time passed: local must run again"
    assert after[0].features.attributes["local.feature"].elements == {"a": "1", "c": "3"}
    assert after[1].statuses[0].reused is True
    assert after[1].features.attributes["local.feature"].elements == {"a": "1", "c": "3"}


def test_local_expiry_answer_is_the_clock_the_parse_used() -> None:
    """The memo's answer for the expiry times is computed at the moment the files were parsed with, so a
    time passing between the parse and the log cannot make a stale parse look current."""
    from nodecompat.probes.local import parse_feature_file, passed

    t = datetime(2999, 1, 1, tzinfo=UTC)
    parsed = parse_feature_file("# +expiry-time=2999-01-01T00:00:00Z\nk=1\n", "f", t - timedelta(seconds=1))
    assert parsed.features == {"k": "1"} and parsed.expiries == [t]
    assert passed((t,), t - timedelta(seconds=1)) == (False,)
    assert passed((t,), t + timedelta(seconds=1)) == (True,)
    assert passed((t,)) == (False,)  # the clock now


_OUTSIDE = {"value": "1"}  # an input that is not the host tree (a plugin's own state, the clock, a library)


def test_a_plugin_subclassing_a_memoizable_probe_is_not_memoized_unless_it_says_so(tmp_path: Path) -> None:
    """memoizable is a promise about one class's discover(); a plugin subclass that overrides discover() (or
    anything it calls) was never audited for it, yet inherited True: its result was reused while the host
    tree was unchanged, and a change of what it reads elsewhere was never published."""
    (tmp_path / "f").write_bytes(b"abc")
    _OUTSIDE["value"] = "1"  # the test runs once per path (conftest.py host_reads): each starts from "1"

    class Audited(ReadsOneFile):
        pass

    class Plugin(Audited):  # a third party's tweak: reads something besides the host
        def discover(self, host: HostRoot) -> ProbeOutput:
            out = super().discover(host)
            out.features.add_attributes("readsone.file", {"outside": _OUTSIDE["value"]})
            return out

    Audited("/f")  # the base says memoizable (ReadsOneFile sets it on the class)
    probe = Plugin.__new__(Plugin)
    probe.path, probe.calls, probe.replayable = "/f", 0, True  # the plugin itself declares nothing
    assert "memoizable" not in Plugin.__dict__ and Plugin.memoizable is True
    runner = ProbeRunner([probe], HostRoot(tmp_path))
    try:
        first = runner.run()
        _OUTSIDE["value"] = "2"
        second = runner.run()
    finally:
        runner.close()
    assert first.features.attributes["readsone.file"].elements["outside"] == "1"
    assert second.features.attributes["readsone.file"].elements["outside"] == "2"
    assert not second.statuses[0].reused and probe.calls == 2

    class Declared(Plugin):
        memoizable = True  # a subclass that declares it is memoized as before

    again = Declared.__new__(Declared)
    again.path, again.calls, again.replayable = "/f", 0, True
    assert [r.statuses[0].reused for r in _rounds(again, tmp_path, 3)] == [False, True, True]


class ExtendsKernelVersion(Probe):
    """A plugin adding an element to a built-in probe's feature (kernel.version), from a host file."""

    name = "zz-extends-kernel"  # runs after `kernel` (probes are sorted by name)
    features = (FeatureInfo("kernel.version", frozenset({"attribute"})),)

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput()
        raw = host.read_bytes("/etc/extra")
        if raw is not None:
            out.features.add_attributes("kernel.version", {"extra": raw.decode()})
        return out


def test_a_reused_output_is_not_changed_by_a_later_probe_delivering_the_same_feature(tmp_path: Path) -> None:
    """The round took a built-in probe's features by reference (its output was dropped after the round); with
    the memo that output is kept and reused, so a later probe's merge into the same feature wrote into the
    memo: once the plugin stopped delivering `extra`, the reused kernel output still published it."""
    root = _tree(tmp_path)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "extra").write_text("a")
    kernel, errors = load_probes(["kernel"])
    assert not errors
    runner = ProbeRunner([*kernel, ExtendsKernelVersion()], HostRoot(root))
    try:
        first = runner.run()
        (root / "etc" / "extra").unlink()
        second = runner.run()
        third = runner.run()
    finally:
        runner.close()
    assert first.features.attributes["kernel.version"].elements["extra"] == "a"
    assert next(s for s in second.statuses if s.name == "kernel").reused  # the kernel's host is unchanged
    for r in (second, third):
        assert "extra" not in r.features.attributes["kernel.version"].elements
        assert r.features.attributes["kernel.version"].elements == _fresh(root).features.attributes[
            "kernel.version"].elements


_DRAWN = {"n": 0}


def _drawn(host: HostRoot) -> str:
    """A value several probes share once per round, from a source a replay cannot ask again."""
    probe_memo.not_replayable(host, "a source a replay cannot ask again")
    _DRAWN["n"] += 1
    return str(_DRAWN["n"])


class SharesFirst(Probe):
    name = "shares-a"
    memoizable = True
    features = (FeatureInfo("shares.a", frozenset({"attribute"})),)

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput()
        out.features.add_attributes(self.features[0].name,
                                    {"v": parsecache.per_round(host, "drawn", lambda: _drawn(host))})
        return out


class SharesSecond(SharesFirst):
    name = "shares-b"
    memoizable = True
    features = (FeatureInfo("shares.b", frozenset({"attribute"})),)


def test_a_per_round_value_from_a_non_replayable_source_is_not_replayable_for_its_other_users(
        tmp_path: Path) -> None:
    """parsecache.per_round hands a value computed by one probe to the others with the log of its computation,
    but not_replayable() marked only the probe that computed it: the second user was reused with the first
    round's value while the first published a new one."""
    _DRAWN["n"] = 0
    runner = ProbeRunner([SharesFirst(), SharesSecond()], HostRoot(tmp_path))
    try:
        rounds = [runner.run() for _ in range(3)]
    finally:
        runner.close()
    for name in ("shares.a", "shares.b"):
        assert [r.features.attributes[name].elements["v"] for r in rounds] == ["1", "2", "3"], name
    assert not any(s.reused for r in rounds for s in r.statuses)


def test_a_logs_size_is_counted_alike_in_c_and_python() -> None:
    """memo_replay.finish's size of a log (MAX_LOG_BYTES): the C helper's log_size and the Python loop count
    the same bytes for every kind of answer (bytes, str, a listing, a Raised, a derived value with the bytes it
    came from, a bool)."""
    from nodecompat.probes import host_c, memo_replay
    from nodecompat.probes.probe_memo import Raised

    entries = [(len, ("/a",), b"x" * 70), (len, ("/b",), "héllo"), (len, ("/c",), ["a", "bcd", "ü"]),
               (len, ("/d",), Raised(OSError, 2, "gone")), (len, ("/e", len, b"y" * 9), 3), (len, ("/f",), True),
               (len, ("/g", len, "not bytes"), None), (len, ("/h",), None), (len, (), [])]  # fmt: skip
    expected = 64 * 9 + 70 + 5 + (8 * 3 + 5) + 9
    assert memo_replay._size(entries) == expected  # type: ignore[arg-type]
    c = host_c.module()
    if c is not None:
        assert c.log_size(entries, 64) == expected
