"""The steady round's fast paths (issue 11) keep the round's confinement and never reuse a stale result:
a real runner over a real tree in tmp, a memoizable test probe, links swapped in between rounds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodecompat.hostroot import HostRoot
from nodecompat.probes import root_resolve
from nodecompat.probes.base import FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.probe_round import ProbeRound
from nodecompat.probes.round_host import RoundHost
from nodecompat.probes.runner import ProbeRunner


class ReadsDir(Probe):
    """Reads /sys/d/a and /sys/d/b (one directory, asked for twice: held, and hinted next round) and lists
    /sys/d; publishes what it read."""

    name = "readsdir"
    memoizable = True
    features = (FeatureInfo("readsdir.files", frozenset({"attribute"})),)

    def __init__(self) -> None:
        self.calls = 0

    def discover(self, host: HostRoot) -> ProbeOutput:
        self.calls += 1
        out = ProbeOutput()
        got = {n: repr(host.read_bytes(f"/sys/d/{n}")) for n in ("a", "b")}
        got["names"] = ",".join(host.listdir("/sys/d"))
        out.features.add_attributes("readsdir.files", got)
        return out


def _files(r: ProbeRound) -> dict[str, str]:
    return r.features.attributes["readsdir.files"].elements


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def openat2(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(root_resolve, "USE_OPENAT2", request.param)
    return bool(request.param)


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    d = root / "sys" / "d"
    d.mkdir(parents=True)
    (d / "a").write_bytes(b"A\n")
    (d / "b").write_bytes(b"B\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a").write_bytes(b"SECRET-a\n")
    (outside / "b").write_bytes(b"SECRET-b\n")
    return root, outside


def test_a_hinted_directory_is_held_at_its_first_use_and_answers_as_before(tmp_path: Path, openat2: bool) -> None:
    """The next round holds the last round's held directories at once (held_parents.py hint): its first
    file is opened by name in the held directory, and every answer is HostRoot's."""
    root, _ = _tree(tmp_path)
    plain = HostRoot(root)
    first = RoundHost.over(plain)
    assert [first.read_bytes("/sys/d/a"), first.read_bytes("/sys/d/b")] == [b"A\n", b"B\n"]
    held = first._held()
    if not openat2:  # under a host root without openat2 the round walks directory descriptors instead
        assert held is None
        return
    from nodecompat.probes.held_parents import worth_holding

    hint = worth_holding(first._parents)
    assert hint == frozenset({"/sys/d"})
    nxt = RoundHost.over(plain, hint)
    assert nxt.read_bytes("/sys/d/a") == b"A\n" == plain.read_bytes("/sys/d/a")
    again = nxt._held()
    assert again is not None and again.state["/sys/d"] >= 0, "held at its first use"
    assert nxt.read_bytes("/sys/d/missing") is None and nxt.read_bytes("/sys/d/b") == b"B\n"


def test_a_first_round_holds_at_the_third_request_and_hints_what_was_asked_for_twice(
    tmp_path: Path, openat2: bool
) -> None:
    """A round without a hint (a runner's first) holds a directory at its FIRST_HOLD_AT-th (third) request, not
    its second: two whole-path opens cost less than a hold, a name open and a close. Its hint for the next
    round still names the directory asked for twice, which that round holds at once (as before), and every
    answer is HostRoot's."""
    from nodecompat.probes.held_parents import FIRST_HOLD_AT, worth_holding

    assert FIRST_HOLD_AT == 3
    root, _ = _tree(tmp_path)
    (root / "sys" / "d" / "c").write_bytes(b"C\n")
    plain = HostRoot(root)
    first = RoundHost.over(plain)
    assert [first.read_bytes("/sys/d/a"), first.read_bytes("/sys/d/b")] == [b"A\n", b"B\n"]
    held = first._held()
    if not openat2:  # under a host root without openat2 the round walks directory descriptors instead
        assert held is None
        return
    assert held.state["/sys/d"] < -2, "asked for twice: not held yet"
    assert worth_holding(first._parents) == frozenset({"/sys/d"})
    assert first.read_bytes("/sys/d/c") == b"C\n" == plain.read_bytes("/sys/d/c")
    assert held.state["/sys/d"] >= 0, "held at the third request"
    assert first.read_bytes("/sys/d/nope") is None
    assert worth_holding(first._parents) == frozenset({"/sys/d"})
    nxt = RoundHost.over(plain, frozenset({"/sys/d"}))
    assert nxt.read_bytes("/sys/d/a") == b"A\n"
    again = nxt._held()
    assert again is not None and again.state["/sys/d"] >= 0, "hinted: held at its first use"


def test_a_link_out_of_the_root_swapped_in_between_steady_rounds_is_refused_and_seen(
    tmp_path: Path, openat2: bool
) -> None:
    """Between steady rounds (the runner holds /sys/d at once, hinted, and replays the probe's reads),
    the last name is swapped for an absolute link out of the root, then the directory itself for one: the
    replay reads through the round's confinement (O_NOFOLLOW by name, the link re-rooted inside the root),
    so the probe runs again and publishes the re-rooted answer, never the file outside."""
    root, outside = _tree(tmp_path)
    probe = ReadsDir()
    runner = ProbeRunner([probe], HostRoot(root))
    try:
        r1, r2 = runner.run(), runner.run()
        assert probe.calls == 1 and r2.statuses[0].reused and _files(r2) == _files(r1)
        assert _files(r1) == {"a": repr(b"A\n"), "b": repr(b"B\n"), "names": "a,b"}
        os.unlink(root / "sys" / "d" / "b")
        os.symlink(outside / "b", root / "sys" / "d" / "b")  # absolute: means <root>/<outside>/b, not there
        r3, r4 = runner.run(), runner.run()
        os.rename(root / "sys" / "d", root / "sys" / "old")
        os.symlink(outside, root / "sys" / "d")  # the directory: re-rooted, <root>/<outside> is not there
        r5, r6 = runner.run(), runner.run()
        (root / "sys" / "e").mkdir()
        os.unlink(root / "sys" / "d")
        os.rename(root / "sys" / "old", root / "sys" / "d")
        (root / "sys" / "d" / "a").write_bytes(b"A2\n")  # a published input changes: seen
        r7 = runner.run()
    finally:
        runner.close()
    assert not r3.statuses[0].reused and _files(r3)["b"] == "None"
    assert r4.statuses[0].reused and _files(r4) == _files(r3)
    assert not r5.statuses[0].reused
    assert _files(r5) == {"a": "None", "b": "None", "names": ""}
    assert r6.statuses[0].reused
    assert not r7.statuses[0].reused and _files(r7)["a"] == repr(b"A2\n")
    assert "SECRET" not in repr([_files(r) for r in (r3, r4, r5, r6, r7)])


def test_a_round_that_reused_every_probe_gives_the_last_merge_in_dicts_of_its_own(tmp_path: Path) -> None:
    """A round reusing every probe's output gives the last round's features again without merging them
    anew (round_merge.again); its dicts, statuses and notes are its own, so a consumer removing a feature
    from one round's features, or changing a status's notes, does not change the next; a changed input is
    merged anew."""
    root, _ = _tree(tmp_path)
    probe = ReadsDir()
    runner = ProbeRunner([probe], HostRoot(root))
    try:
        r1, r2 = runner.run(), runner.run()
        assert r2.statuses[0].reused and r2.features == r1.features and r2.features is not r1.features
        del r2.features.attributes["readsdir.files"]  # a consumer's change to the round it was given
        r1.features.attributes.clear()
        r2.statuses[0].notes.append("a consumer's note")
        r2.statuses[0].features.clear()
        r3 = runner.run()
        (root / "sys" / "d" / "b").write_bytes(b"B2\n")
        r4, r5 = runner.run(), runner.run()
    finally:
        runner.close()
    assert r3.statuses[0].reused and _files(r3) == {"a": repr(b"A\n"), "b": repr(b"B\n"), "names": "a,b"}
    assert r3.statuses[0].notes == [] and r3.statuses[0].features == ["readsdir.files"]
    assert not r4.statuses[0].reused and _files(r4)["b"] == repr(b"B2\n")
    assert r5.statuses[0].reused and r5.features == r4.features


def test_a_host_root_that_is_not_there_gives_the_same_round_every_round(tmp_path: Path) -> None:
    """A daemon started on a host root that does not exist (or whose mount went away) publishes the same
    features and statuses every round, as the first; the probes that succeeded are reused. With the C helper
    the steady round's replay opened the root for its descriptor outside replays()' error handling: the
    FileNotFoundError failed gpu and usb every second round (their instances dropped, then back), so the
    fingerprint changed every round and every watcher was sent the node's features again."""
    from nodecompat.probes.registry import load_probes

    probes, _ = load_probes()
    runner = ProbeRunner(probes, HostRoot(tmp_path / "not-there"))
    try:
        rounds = [runner.run() for _ in range(4)]
    finally:
        runner.close()
    first = rounds[0]
    ok = {s.name for s in first.statuses if s.ok}
    assert {"gpu", "usb"} <= ok  # nothing to list: no devices, not an error
    for r in rounds[1:]:
        assert r.features.to_nfd() == first.features.to_nfd()
        assert [(s.name, s.ok, s.error) for s in r.statuses] == [(s.name, s.ok, s.error) for s in first.statuses]
        assert {s.name for s in r.statuses if s.reused} == ok


class NamesChange(ReadsDir):
    """ReadsDir whose feature_names() is its own (a plugin may compute it): `names` as it is now."""

    memoizable = True  # declared by the class itself (probe_memo.declared_memoizable)

    def __init__(self) -> None:
        super().__init__()
        self.names = ["readsdir.files"]

    def feature_names(self) -> list[str]:
        return list(self.names)


def test_a_status_declares_the_probes_features_as_they_are_in_that_round(tmp_path: Path) -> None:
    """The runner keeps each probe's feature names between rounds (asked once per probe, not per round):
    a probe given other `features`, or whose own feature_names() answers otherwise, is declared so in the
    next steady round's status (reused output, round_merge.again), and a consumer changing a status's list
    does not change the next round's."""
    root, _ = _tree(tmp_path)
    plain, own = ReadsDir(), NamesChange()
    own.name = "ownnames"  # type: ignore[misc]
    runner = ProbeRunner([plain, own], HostRoot(root))
    try:
        runner.run()
        r2 = runner.run()
        assert all(s.reused for s in r2.statuses)
        assert [s.features for s in r2.statuses] == [["readsdir.files"], ["readsdir.files"]]
        r2.statuses[0].features.append("consumer.added")
        plain.features = (*ReadsDir.features, FeatureInfo("readsdir.more", frozenset({"attribute"})))  # type: ignore[misc]
        own.names = ["readsdir.files", "ownnames.extra"]
        r3 = runner.run()
    finally:
        runner.close()
    assert all(s.reused for s in r3.statuses)
    st = {s.name: s.features for s in r3.statuses}
    assert st == {"readsdir": ["readsdir.files", "readsdir.more"], "ownnames": ["readsdir.files", "ownnames.extra"]}


class ReadsDirs(Probe):
    """Reads files a and b of each directory in `dirs` (each asked for twice: held, hinted next round);
    not memoizable, so every round asks for what `dirs` says then."""

    name = "readsdirs"
    features = (FeatureInfo("readsdirs.files", frozenset({"attribute"})),)

    def __init__(self, dirs: list[str]) -> None:
        self.dirs = dirs

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput()
        got = {f"{d}/{n}": repr(host.read_bytes(f"{d}/{n}")) for d in self.dirs for n in ("a", "b")}
        out.features.add_attributes("readsdirs.files", got)
        return out


def test_the_hold_hint_follows_the_directories_the_last_round_asked_for(tmp_path: Path) -> None:
    """The next round's hint (held_parents.worth_holding) is the directories the last round held or found
    missing: the same hint again after a round that asked for the same ones, another one after a round that
    asked for as many other directories, a larger one after a round that asked for more."""
    root, _ = _tree(tmp_path)
    (root / "sys" / "e").mkdir()
    for n in ("a", "b"):
        (root / "sys" / "e" / n).write_bytes(b"E\n")
    probe = ReadsDirs(["/sys/d"])
    runner = ProbeRunner([probe], HostRoot(root))
    hints = []
    try:
        for dirs in (["/sys/d"], ["/sys/d"], ["/sys/e"], ["/sys/e", "/sys/gone"], ["/sys/e"], []):
            probe.dirs = dirs
            rnd = runner.run()
            assert rnd.statuses[0].ok
            hints.append(set(runner._hold_hint))
    finally:
        runner.close()
    assert hints == [{"/sys/d"}, {"/sys/d"}, {"/sys/e"}, {"/sys/e", "/sys/gone"}, {"/sys/e"}, set()]
