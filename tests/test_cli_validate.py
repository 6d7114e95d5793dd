"""`nodecompat validate` and `nodecompat lint` as a user runs them (subprocess of the installed script)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support_specs import GPU_SPEC, fake_features, gpu_node, rules_data

NODECOMPAT = str(Path(sys.executable).parent / "nodecompat")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NODECOMPAT, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(GPU_SPEC)
    node = tmp_path / "node.json"
    node.write_text(json.dumps({**gpu_node().to_nfd(), "node_name": "n1"}))
    return {"spec": spec, "node": node, "dir": tmp_path}


def test_compatible_exit_0_table(files: dict[str, Path]) -> None:
    r = _run("validate", "--spec", str(files["spec"]), "--features", str(files["node"]))
    assert r.returncode == 0, r.stderr
    assert "SET #1 GPU node (tag gpu, weight 10): PASS 2/2 rules" in r.stdout
    assert "COMPATIBLE (score 10)" in r.stdout
    assert "\033[" not in r.stdout  # not a TTY: no colour


def test_not_compatible_exit_1_with_reason(files: dict[str, Path]) -> None:
    bad = files["dir"] / "bad.yaml"
    bad.write_text(GPU_SPEC.replace('"0302"', '"0300"'))
    r = _run("validate", "--spec", str(bad), "--features", str(files["node"]), "--tags", "gpu")
    assert r.returncode == 1
    assert "FAIL 1/2 rules" in r.stdout
    assert (
        "pci.device.class: wanted In [0300], node has 0302 on pci.device[2] address=0000:02:00.0" in r.stdout
    )


def test_failed_probe_in_snapshot_makes_facts_unknown(files: dict[str, Path]) -> None:
    data = gpu_node().to_nfd()
    del data["instances"]["pci.device"]
    data["probes"] = [{"name": "pci", "ok": False, "error": "EACCES", "features": ["pci.device"]}]
    snap = files["dir"] / "snap.json"
    snap.write_text(json.dumps(data))
    r = _run("validate", "--spec", str(files["spec"]), "--features", str(snap), "--tags", "gpu", "-o", "json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["unknown_facts"] == ["pci.device: probe pci failed: EACCES"]
    assert out["sets"][0]["unknown"] is True


def test_errors_exit_2_on_stderr_only(files: dict[str, Path]) -> None:
    bad = files["dir"] / "bad.yaml"
    bad.write_text(GPU_SPEC.replace('{op: In, value: ["10de"]}', "{op: In}"))
    r = _run("validate", "--spec", str(bad), "--features", str(files["node"]))
    assert r.returncode == 2 and r.stdout == ""
    assert "matchExpressions.vendor: In needs at least one value" in r.stderr
    r = _run("validate", "--spec", str(files["dir"] / "missing.yaml"), "--features", str(files["node"]))
    assert r.returncode == 2 and r.stdout == "" and "cannot read spec" in r.stderr
    r = _run("validate", "--spec", str(files["spec"]), "--features", str(files["spec"]))
    assert r.returncode == 2 and r.stdout == "" and "cannot read features snapshot" in r.stderr


def test_nfd_json_exact_for_a_conformance_case(tmp_path: Path) -> None:
    case = next(c for c in rules_data()["validator_cases"] if c["id"] == "multiple-sets")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(case["spec"]))
    node = tmp_path / "fake.json"
    node.write_text(json.dumps(fake_features().to_nfd()))
    r = _run("validate", "--spec", str(spec), "--features", str(node), "-o", "nfd-json")
    assert r.returncode == 0, r.stderr
    assert r.stdout == json.dumps(case["expected_output"], separators=(",", ":"))


def test_lint_exit_codes(files: dict[str, Path]) -> None:
    bad = files["dir"] / "bad.yaml"
    bad.write_text(
        "compatibilities:\n- rules:\n  - matchFeatures:\n    - feature: x.y\n"
        "      matchExpressions: {a: {op: Nope}}\n"
    )
    r = _run("lint", str(bad))
    assert r.returncode == 1
    assert "compatibilities[0].rules[0].matchFeatures[0].matchExpressions.a: unknown op 'Nope'" in r.stdout
    r = _run("lint", str(files["dir"] / "nope.yaml"))
    assert r.returncode == 2 and "cannot read" in r.stderr
    clean = files["dir"] / "clean.yaml"
    clean.write_text("version: v1alpha1\ncompatibilities:\n- rules:\n  - name: always\n")
    r = _run("lint", str(clean))
    assert r.returncode == 0 and r.stdout.strip().endswith("ok")


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"\x7fELF\x02\x01\x01\x00\x00\x00", "a binary file"), (b"version: v1alpha1\n# caf\xe9\n", "not UTF-8 text")],
    ids=["binary", "latin-1"],
)
def test_lint_unreadable_file_exits_2(files: dict[str, Path], content: bytes, why: str) -> None:
    path = files["dir"] / "spec.bin"
    path.write_bytes(content)
    r = _run("lint", str(path))
    assert r.returncode == 2, r.stdout
    assert f"cannot read {path}: {why}" in r.stderr and r.stdout == ""


def test_lint_example_spec_is_clean_and_unknown_features_are_warnings(files: dict[str, Path]) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "gpu-node.yaml"
    r = _run("lint", str(example))
    assert r.returncode == 0 and r.stdout == f"{example}: ok\n", r.stdout
    usb = files["dir"] / "acme.yaml"
    usb.write_text(
        "version: v1alpha1\ncompatibilities:\n- rules:\n  - matchFeatures:\n    - feature: acme.widget\n"
        "      matchExpressions: {vendor: {op: In, value: ['1d6b']}}\n"
    )
    r = _run("lint", str(usb))
    assert r.returncode == 1
    assert r.stdout.startswith(f"{usb}: warning: compatibilities[0].rules[0].matchFeatures[0].feature: unknown feature")
