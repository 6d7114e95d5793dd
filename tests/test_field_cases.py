"""The field cases (real hosts where nodecompat once gave the wrong NFD verdict) as tests.

tests/fixtures/field-cases is a copy of ../shared/field-cases (so a clone anywhere runs them); the
hand-off stores sysfs symlinks as regular files holding the link target, the copy has real links
(so `nodecompat validate --host-root` works on it as on a host). A test keeps the two equal.
Each case runs as a user would: `nodecompat validate --spec spec.yaml --host-root host -o json`,
and every rule's verdict must be the one expected.txt states ("Right verdict: rule "X" PASS").
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support_hosts import attrs, run

from nodecompat.hostroot import HostRoot
from nodecompat.probes.cpu import CpuProbe
from nodecompat.probes.cpu_security import CpuSecurityProbe
from nodecompat.probes.hugepages import HugepagesProbe

HERE = Path(__file__).resolve().parent
CASES = HERE / "fixtures" / "field-cases"
SHARED = HERE.parent.parent / "shared" / "field-cases"
NODECOMPAT = str(Path(sys.executable).parent / "nodecompat")
NAMES = sorted(p.name for p in CASES.iterdir() if p.is_dir())
_RULE = re.compile(r'rule "([^"]+)" (PASS|FAIL)')


def expected_rules(case: Path) -> dict[str, bool]:
    """Rule name -> expected match, from the 'Right verdict:' paragraph of expected.txt
    ('rule "X" PASS, rule "Y" FAIL', or 'both/all rules PASS' for every rule of the spec)."""
    text = (case / "expected.txt").read_text()
    verdict = text.split("Right verdict:", 1)[1].split("\nWhy", 1)[0]
    found = {name: res == "PASS" for name, res in _RULE.findall(verdict)}
    if not found and re.search(r"\b(both|all) rules PASS", verdict):
        spec = yaml.safe_load((case / "spec.yaml").read_text())
        found = {r["name"]: True for c in spec["compatibilities"] for r in c["rules"]}
    assert found, f"no rule verdicts in {case}/expected.txt"
    return found


def test_the_three_cases_are_here() -> None:
    assert NAMES == ["11-arm64-cpu-model", "13-no-hugetlbfs-hugepages-absent", "15-cpu-security-sev-snp"]


@pytest.mark.parametrize("name", NAMES)
def test_verdict_as_expected(name: str) -> None:
    case = CASES / name
    r = subprocess.run(
        [NODECOMPAT, "validate", "--spec", str(case / "spec.yaml"), "--host-root", str(case / "host"), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    want = expected_rules(case)
    got = {rule["name"]: rule["matched"] for s in json.loads(r.stdout)["sets"] for rule in s["rules"]}
    assert got == want, r.stdout
    assert r.returncode == (0 if all(want.values()) else 1)


def test_11_arm64_cpu_model_exact() -> None:
    """klauspost/cpuid detect_arm64.go: MIDR 0x411FD401 -> ARM, family 31, id 54273; NFD cpu.go
    getHypervisor(): VM() is false on arm64 -> "none"."""
    wire, _ = run(CpuProbe(), HostRoot(CASES / "11-arm64-cpu-model" / "host"))
    assert attrs(wire, "cpu.model") == {"vendor_id": "ARM", "family": "31", "id": "54273", "hypervisor": "none"}


def test_13_hugepages_false_without_hugetlbfs() -> None:
    """NFD source/memory/memory.go detectHugePages(): ErrNotExist -> {"enabled": "false"}, published."""
    wire, _ = run(HugepagesProbe(), HostRoot(CASES / "13-no-hugetlbfs-hugepages-absent" / "host"))
    assert attrs(wire, "memory.hugepages") == {"enabled": "false"}


def test_15_sev_snp_from_kvm_amd_parameters() -> None:
    """NFD source/cpu/security_amd64.go sevParameterEnabled(); no misc.capacity -> no asids."""
    wire, _ = run(CpuSecurityProbe(), HostRoot(CASES / "15-cpu-security-sev-snp" / "host"))
    sec = attrs(wire, "cpu.security") or {}
    assert {k: v for k, v in sec.items() if k.startswith("sev")} == {
        "sev.enabled": "true",
        "sev.es.enabled": "true",
        "sev.snp.enabled": "true",
    }


def _tree(root: Path) -> dict[str, bytes]:
    """Relative path -> content; a symlink counts as a file holding its target (the hand-off's form)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_symlink():
            out[str(p.relative_to(root))] = os.readlink(p).encode()
        elif p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def test_the_projects_copy_matches_shared_field_cases() -> None:
    """tests/fixtures/field-cases equals ../shared/field-cases (when it is beside the clone) for these cases."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not beside this clone; the copy in {CASES} is used as is")
    for name in NAMES:
        assert _tree(CASES / name) == _tree(SHARED / name), f"refresh {CASES / name} from {SHARED / name}"
