"""`nodecompat features --nfd-only` and `validate --nfd-compat` / `-o nfd-json` as a user runs them,
and the unseen-name reasons in the table and the JSON (issue 9 items 4, 5), on the fixture hosts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support_daemon import start_daemon
from support_hosts import FIXTURES, HOST_NAMES
from test_nfd_view import _nfd_oracle

from nodecompat.features import Features

NODECOMPAT = str(Path(sys.executable).parent / "nodecompat")

SPEC = """\
version: v1alpha1
compatibilities:
- description: NUMA-aware
  rules:
  - name: numa
    matchFeatures:
    - feature: pci.device
      matchName: {op: In, value: [numa_node]}
  - name: typo
    matchFeatures:
    - feature: kernel.version
      matchExpressions:
        mjaor: {op: DoesNotExist}
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NODECOMPAT, *args], capture_output=True, text=True, timeout=120)


def _sections(d: dict[str, object]) -> dict[str, object]:
    return {k: d[k] for k in ("flags", "attributes", "instances")}


@pytest.mark.parametrize("host", HOST_NAMES)
def test_features_nfd_only_prints_exactly_nfds_set(host: str) -> None:
    root = str(FIXTURES / host)
    full = _run("features", "-o", "json", "--host-root", root)
    nfd = _run("features", "-o", "json", "--nfd-only", "--host-root", root)
    assert full.returncode == 0 and nfd.returncode == 0, full.stderr + nfd.stderr
    full_d, nfd_d = json.loads(full.stdout), json.loads(nfd.stdout)
    assert _sections(nfd_d) == _nfd_oracle(Features.from_nfd(full_d)).to_nfd()
    assert "memory.size" in full_d["attributes"] and "memory.size" not in nfd_d["attributes"]
    assert all("address" not in i["attributes"] for i in nfd_d["instances"]["pci.device"]["elements"])


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(SPEC)
    return p


def test_validate_default_and_nfd_mode_differ_by_an_addition(spec: Path) -> None:
    root = str(FIXTURES / "h100-server")
    default = _run("validate", "--spec", str(spec), "--host-root", root, "-o", "json")
    nfd = _run("validate", "--spec", str(spec), "--host-root", root, "-o", "json", "--nfd-compat")
    assert (default.returncode, nfd.returncode) == (0, 1), default.stderr + nfd.stderr
    d, n = json.loads(default.stdout), json.loads(nfd.stdout)
    assert (d["nfd_view"], n["nfd_view"]) == (False, True)
    numa_expr = n["sets"][0]["rules"][0]["match_features"][0]["expressions"][0]
    assert numa_expr["fact"] == "FACT_STATUS_NFD_HIDDEN" and not numa_expr["matched"]
    # the misspelt attribute: DoesNotExist holds (NFD's answer), and the JSON says nobody provides it
    typo = d["sets"][0]["rules"][1]["match_features"][0]["expressions"][0]
    assert typo["matched"] and typo["fact"] == "FACT_STATUS_NOT_PROVIDED" and typo["suggestion"] == "major"
    assert {(u["feature"], u["element"], u["fact"]) for u in n["unseen_names"]} == {
        ("pci.device", "numa_node", "FACT_STATUS_NFD_HIDDEN"),
        ("kernel.version", "mjaor", "FACT_STATUS_NOT_PROVIDED"),
    }


def test_table_tells_unprovided_from_hidden(spec: Path) -> None:
    r = _run("validate", "--spec", str(spec), "--host-root", str(FIXTURES / "h100-server"), "--nfd-compat")
    assert r.returncode == 1, r.stderr
    assert "in NFD's view (nodecompat's additions hidden)" in r.stdout
    assert "names no probe provides (counted as absent, as NFD does):\n" \
        "  no probe provides `mjaor` of `kernel.version` — did you mean `major`?" in r.stdout
    assert "hidden in NFD's view (NFD does not publish them):\n  `numa_node` of `pci.device`" in r.stdout


def test_nfd_json_output_is_nfds_view(spec: Path, tmp_path: Path) -> None:
    """-o nfd-json implies NFD mode, on a full snapshot too: NFD would say the numa rule fails."""
    snap = tmp_path / "snap.json"
    got = _run("features", "-o", "json", "--host-root", str(FIXTURES / "h100-server"))
    snap.write_text(got.stdout)
    r = _run("validate", "--spec", str(spec), "--features", str(snap), "-o", "nfd-json")
    assert r.returncode == 1, r.stderr
    [out] = json.loads(r.stdout)
    assert [x["isMatch"] for x in out["rules"]] == [False, True]


def test_validate_node_nfd_compat(spec: Path, tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--host-root", str(FIXTURES / "amd-mi300"), name="mi300")
    try:
        default = _run("validate", "--spec", str(spec), "--node", d.address, "-o", "json")
        nfd = _run("validate", "--spec", str(spec), "--node", d.address, "-o", "json", "--nfd-compat")
    finally:
        d.terminate()
    assert (default.returncode, nfd.returncode) == (0, 1), default.stderr + nfd.stderr
    assert json.loads(nfd.stdout)["nfd_view"] is True
    assert [u["fact"] for u in json.loads(default.stdout)["unseen_names"]] == ["FACT_STATUS_NOT_PROVIDED"]
