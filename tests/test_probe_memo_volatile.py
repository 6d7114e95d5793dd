"""Volatile host files and the probe memo (probes/memo_derived.py): the cpu probes depend only on
hostcpu.cpuinfo_facts of /proc/cpuinfo and the memory probe only on memory.meminfo_sizes of /proc/meminfo,
so a change of cpu MHz or MemFree between rounds reuses the memo while a change of anything a probe
publishes makes it run. Real fixture trees copied to tmp, real probes, a fresh (unmemoized) round compared."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.probe_round import ProbeRound
from nodecompat.probes.registry import load_probes
from nodecompat.probes.runner import ProbeRunner

FIXTURES = Path(__file__).parent / "fixtures" / "hosts"
CPU_PROBES = ["cpu", "cpu_power", "cpu_rdt", "cpu_security"]
NAMES = [*CPU_PROBES, "memory"]


def _tree(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root, symlinks=True)
    return root


def _fresh(root: Path) -> ProbeRound:
    probes, errors = load_probes(NAMES)
    assert not errors
    runner = ProbeRunner(probes, HostRoot(root), memoize=False)
    try:
        return runner.run()
    finally:
        runner.close()


def _view(r: ProbeRound) -> tuple[Features, list[tuple[str, bool, str, list[str]]]]:
    return r.features, [(s.name, s.ok, s.error, s.notes) for s in r.statuses]


class Memoized:
    """A long-lived runner over the cpu probes and memory (the daemon's), its first round already run."""

    def __init__(self, root: Path) -> None:
        probes, errors = load_probes(NAMES)
        assert not errors
        self.runner = ProbeRunner(probes, HostRoot(root))
        first = self.runner.run()
        assert not any(s.reused for s in first.statuses)
        assert {s.name for s in self.runner.run().statuses if s.reused} == set(NAMES)  # all memoized

    def run(self) -> tuple[ProbeRound, set[str]]:
        r = self.runner.run()
        return r, {s.name for s in r.statuses if not s.reused}

    def close(self) -> None:
        self.runner.close()


def _edit(path: Path, key: str, fn: Callable[[str], str]) -> None:
    """Every line `key<spaces/tabs>: value` of `path` gets value fn(value)."""
    pat = re.compile(rf"^({re.escape(key)}\s*:\s*)(.*)$", re.M)
    text = path.read_text()
    new = pat.sub(lambda m: m.group(1) + fn(m.group(2)), text)
    assert new != text, f"{key} not in {path}"
    path.write_text(new)


@pytest.mark.parametrize("fixture", ["h100-server", "amd-mi300", "grace-arm64"])
def test_cpu_mhz_and_bogomips_changing_reuse_the_memo(tmp_path: Path, fixture: str) -> None:
    root = _tree(tmp_path, fixture)
    cpuinfo = root / "proc/cpuinfo"
    m = Memoized(root)
    try:
        text = cpuinfo.read_text()
        changed = 0
        for key in ("cpu MHz", "bogomips", "BogoMIPS"):
            if re.search(rf"^{key}\s*:", text, re.M):
                _edit(cpuinfo, key, lambda v: str(float(v) + 17.5))
                changed += 1
        assert changed, "the fixture has frequency lines"
        r, ran = m.run()
    finally:
        m.close()
    assert ran == set(), "the probes ran again though nothing they publish changed"
    assert _view(r) == _view(_fresh(root))


def test_a_cpu_flag_change_is_seen(tmp_path: Path) -> None:
    root = _tree(tmp_path, "h100-server")
    m = Memoized(root)
    try:
        r1, _ = m.run()
        assert "AVX512F" in r1.features.flags["cpu.cpuid"].elements
        _edit(root / "proc/cpuinfo", "flags", lambda v: " ".join(f for f in v.split() if f != "avx512f"))
        r2, ran = m.run()
        r3, ran3 = m.run()
    finally:
        m.close()
    assert "cpu" in ran and "AVX512F" not in r2.features.flags["cpu.cpuid"].elements
    assert _view(r2) == _view(_fresh(root))
    assert ran3 == set() and _view(r3) == _view(r2)  # recorded anew: reused from then on


@pytest.mark.parametrize(
    "key, publishes",
    [
        ("MemFree", False),
        ("SwapFree", False),
        ("HugePages_Total", False),  # memory.hugepages: /sys/kernel/mm/hugepages (NFD source/memory/memory.go)
        ("Hugepagesize", False),
        ("MemTotal", True),
        ("MemAvailable", True),
        ("SwapTotal", True),
    ],
)
def test_meminfo_changes_rerun_memory_only_when_a_published_size_changes(
    tmp_path: Path, key: str, publishes: bool
) -> None:
    root = _tree(tmp_path, "h100-server")
    m = Memoized(root)
    try:
        _edit(root / "proc/meminfo", key, lambda v: re.sub(r"\d+", lambda d: str(int(d.group()) + 1), v, count=1))
        r, ran = m.run()
    finally:
        m.close()
    assert ran == ({"memory"} if publishes else set())
    assert _view(r) == _view(_fresh(root))
    if publishes:
        attr = {"MemTotal": "total_bytes", "MemAvailable": "available_bytes", "SwapTotal": "swap_total_bytes"}[key]
        line = next(ln for ln in (root / "proc/meminfo").read_text().splitlines() if ln.startswith(key + ":"))
        assert r.features.attributes["memory.size"].elements[attr] == str(int(line.split()[1]) * 1024)


def _mutations(path: Path, first_block_only: bool) -> list[tuple[int, str]]:
    """(line index, new line) for each `key: value` line: the value's last word dropped when it has several
    (a flag removed), else its value with "1" appended ("6" -> "61", "GenuineIntel" -> "GenuineIntel1")."""
    lines = path.read_text().split("\n")
    out = []
    for i, line in enumerate(lines):
        if first_block_only and not line.strip():
            break
        key, sep, value = line.partition(":")
        if not sep:
            continue
        words = value.split()
        if len(words) > 1 and words[-1] != "kB":
            new = key + sep + " " + " ".join(words[:-1])
        elif words and words[0].isdigit():
            new = key + sep + " " + str(int(words[0]) + 1) + (" kB" if words[-1] == "kB" else "")
        else:
            new = line + "1"
        out.append((i, new))
    return out


@pytest.mark.parametrize(
    "fixture, file",
    [
        ("h100-server", "proc/cpuinfo"),
        ("grace-arm64", "proc/cpuinfo"),
        ("amd-mi300", "proc/cpuinfo"),
        ("h100-server", "proc/meminfo"),
    ],
)
def test_every_line_changed_gives_what_a_fresh_round_gives(tmp_path: Path, fixture: str, file: str) -> None:
    """The derived values must hold every field the probes publish: after each line of the file (cpuinfo:
    its first processor's block, the one the probes use) is changed, the memoized runner's round equals a
    fresh one. Fails when cpuinfo_facts or meminfo_sizes leaves out a field a probe's output depends on."""
    root = _tree(tmp_path, fixture)
    path = root / file
    original = path.read_text().split("\n")
    m = Memoized(root)
    try:
        for i, new in _mutations(path, first_block_only=file.endswith("cpuinfo")):
            lines = list(original)
            lines[i] = new
            path.write_text("\n".join(lines))
            r, _ = m.run()
            assert _view(r) == _view(_fresh(root)), f"stale after {original[i]!r} -> {new!r}"
            path.write_text("\n".join(original))
            r, _ = m.run()
            assert _view(r) == _view(_fresh(root)), f"stale after {new!r} -> {original[i]!r}"
    finally:
        m.close()


def test_a_cpuinfo_too_large_to_keep_beside_its_facts_is_still_compared_by_them(tmp_path: Path) -> None:
    """A replay compares the file's bytes with those its logged value came from (a shortcut, bytes kept up to
    memo_derived.MAX_SEEN_BYTES); past that (a many-CPU host) the facts are derived again and compared."""
    from nodecompat.probes import memo_derived

    root = _tree(tmp_path, "h100-server")
    cpuinfo = root / "proc/cpuinfo"
    block = cpuinfo.read_text().split("\n\n")[0].strip("\n")
    blocks = [block.replace("processor\t: 0", f"processor\t: {i}") for i in range(64)]
    cpuinfo.write_text("\n\n".join(blocks) + "\n\n")
    assert cpuinfo.stat().st_size > memo_derived.MAX_SEEN_BYTES
    m = Memoized(root)
    try:
        _edit(cpuinfo, "cpu MHz", lambda v: str(float(v) + 1))
        r1, ran1 = m.run()
        _edit(cpuinfo, "flags", lambda v: " ".join(f for f in v.split() if f != "avx512f"))
        r2, ran2 = m.run()
    finally:
        m.close()
    assert ran1 == set() and "AVX512F" in r1.features.flags["cpu.cpuid"].elements
    assert "cpu" in ran2 and "AVX512F" not in r2.features.flags["cpu.cpuid"].elements
    assert _view(r2) == _view(_fresh(root))


@pytest.mark.parametrize(
    "text",
    [
        "MemTotal: 10 kB\nMemFree: 5 kB\nMemAvailable: 7 kB\nSwapTotal: 0 kB\n",
        " MemTotal : 10 kB\nMemTotal: 11 kB\nMemAvailable: x kB\nSwapTotal: 3\n",  # spaces, repeated, junk
        "MemAvailable:\nSwapTotal: 1 MB\r\nHugePages_Total: 4\nMemTotal 5 kB\n",
        "",
    ],
)
def test_meminfo_sizes_are_parse_meminfos_values(text: str) -> None:
    from nodecompat.probes.memory import SIZE_KEYS, meminfo_sizes, parse_meminfo

    mi = parse_meminfo(text.replace("\r\n", "\n"))
    assert meminfo_sizes(text.encode()) == {k: mi[k] for k in SIZE_KEYS if k in mi}
    assert meminfo_sizes(None) is None
