"""Shared helpers for the engine tests: the conformance data, NFD-shaped feature builders, small specs."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from nodecompat.features import Features

# NFD's own test tables as data. The project's copy lives in tests/fixtures/conformance so that a clone
# anywhere can run the suite; ../shared/conformance (beside the clone in CI) is the source, and
# test_conformance.py checks that the copy still matches it whenever it is there.
CONFORMANCE = Path(__file__).resolve().parent / "fixtures" / "conformance"
SHARED_CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"


@cache
def expressions_cases() -> list[dict[str, Any]]:
    return json.loads((CONFORMANCE / "expressions.json").read_text())


@cache
def rules_data() -> dict[str, Any]:
    return json.loads((CONFORMANCE / "rules.json").read_text())


def features_from_sections(sections: dict[str, Any]) -> Features:
    """rules.json's {flags: {feat: [names]}, attributes: {feat: {k: v}}, instances: {feat: [{k: v}]}}."""
    f = Features()
    for name, names in (sections.get("flags") or {}).items():
        f.add_flags(name, names)
    for name, attrs in (sections.get("attributes") or {}).items():
        f.add_attributes(name, attrs)
    for name, insts in (sections.get("instances") or {}).items():
        f.set_instances(name, insts)
    return f


def fake_features() -> Features:
    return features_from_sections(rules_data()["fake_features"])


def gpu_node(n_devices: int = 4, nvidia_at: int = 2) -> Features:
    """A plausible node: kernel facts, loaded modules, and PCI devices with one NVIDIA GPU."""
    f = Features()
    f.add_attributes(
        "kernel.version", {"full": "5.15.0-91-generic", "major": "5", "minor": "15", "revision": "0"}
    )
    f.add_flags("kernel.loadedmodule", ["nvidia", "nvidia_uvm", "vfio_pci"])
    f.add_flags("cpu.cpuid", ["AVX", "AVX2", "SSE4"])
    f.add_attributes("cpu.model", {"vendor_id": "Intel", "family": "6", "id": "85"})
    insts = []
    for i in range(n_devices):
        if i == nvidia_at:
            insts.append(
                {"address": f"0000:{i:02x}:00.0", "class": "0302", "vendor": "10de", "device": "2330"}
            )
        else:
            insts.append(
                {"address": f"0000:{i:02x}:00.0", "class": "0200", "vendor": "1af4", "device": "1000"}
            )
    f.set_instances("pci.device", insts)
    return f


GPU_SPEC = """\
version: v1alpha1
compatibilities:
- description: GPU node
  tag: gpu
  weight: 10
  rules:
  - name: nvidia gpu
    matchFeatures:
    - feature: pci.device
      matchExpressions:
        vendor: {op: In, value: ["10de"]}
        class: {op: In, value: ["0302"]}
  - name: kernel
    matchFeatures:
    - feature: kernel.version
      matchExpressions:
        full: {op: Ge, value: ["5.4"], type: version}
- description: CPU fallback
  tag: cpu
  weight: 1
  rules:
  - name: avx2
    matchFeatures:
    - feature: cpu.cpuid
      matchExpressions:
        AVX2: {op: Exists}
"""


# -- hostile specs (tests/test_hostile.py asserts their behaviour, bench/bench_hostile.py times them) --
def ten_mib_spec() -> str:
    return "version: v1alpha1\n# " + "x" * (10 << 20)


def deep_nesting_specs() -> dict[str, str]:
    return {
        "yaml flow lists": "[" * 10_000 + "]" * 10_000,
        "yaml flow maps": "{a: " * 10_000 + "}" * 10_000,
        "json objects": '{"a":' * 10_000 + "1" + "}" * 10_000,
    }


def billion_laughs_spec() -> str:
    lol = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in "bcdefghi":
        prev = chr(ord(i) - 1)
        lol += f"{i}: &{i} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
    return lol


def catastrophic_regex_case() -> tuple[str, Features]:
    spec = (
        "compatibilities:\n- rules:\n  - matchFeatures:\n    - feature: x.y\n"
        "      matchExpressions: {v: {op: InRegexp, value: ['(a+)+$']}}\n"
    )
    f = Features()
    f.add_attributes("x.y", {"v": "a" * 100_000 + "b"})
    return spec, f


_BIG_RULE = (
    "  - name: r{i:05d}\n    matchFeatures:\n    - feature: pci.device\n      matchExpressions:\n"
    "        vendor: {{op: In, value: [\"10de\"]}}\n        class: {{op: In, value: [\"0302\"]}}\n"
)


def one_mib_spec(max_bytes: int = 1 << 20) -> str:
    """The reviewer's worst case: as many two-expression pci.device rules as fit under 1 MiB (~6,200)."""
    parts = ["version: v1alpha1\ncompatibilities:\n- description: big\n  rules:\n"]
    size = len(parts[0])
    i = 0
    while size + len(rule := _BIG_RULE.format(i=i)) <= max_bytes:
        parts.append(rule)
        size += len(rule)
        i += 1
    return "".join(parts)


def at_the_caps_spec(kind: str = "in") -> str:
    """The costliest spec the complexity caps accept: MAX_EXPRESSIONS terms on pci.device, one expression each.

    kind: "in" (In on a per-device value), "gt" (Gt on a non-numeric value: an evaluation error on every
    device), "regex" (MAX_REGEXES of them InRegexp on the unique address, the rest In) or "name"
    (MAX_REGEXES matchName regexes, the rest In).
    """
    from nodecompat.engine.limits import MAX_EXPRESSIONS, MAX_REGEXES, MAX_RULES, MAX_TERMS

    n = min(MAX_EXPRESSIONS, MAX_TERMS)
    per_rule = -(-n // MAX_RULES)
    lines = ["version: v1alpha1", "compatibilities:", "- rules:"]
    for i in range(n):
        if i % per_rule == 0:
            lines += [f"  - name: r{i // per_rule}", "    matchFeatures:"]
        lines.append("    - feature: pci.device")
        if kind == "gt":
            lines.append(f"      matchExpressions: {{address: {{op: Gt, value: ['{i}']}}}}")
        elif kind == "regex" and i < MAX_REGEXES:
            lines.append(f"      matchExpressions: {{address: {{op: InRegexp, value: ['^0000:{i}']}}}}")
        elif kind == "name" and i < MAX_REGEXES:
            lines.append(f"      matchName: {{op: InRegexp, value: ['^x{i}']}}")
        else:
            lines.append(f"      matchExpressions: {{vendor: {{op: In, value: ['10de', '15b3', 'x{i}']}}}}")
    return "\n".join(lines) + "\n"


def pci_node(n_devices: int = 200) -> Features:
    """A node with `n_devices` PCI devices, each with a distinct address, mostly one vendor."""
    f = Features()
    insts = []
    for i in range(n_devices):
        vendor, cls = ("10de", "0302") if i % 25 == 7 else ("8086", "0604")
        insts.append(
            {
                "address": f"0000:{i // 32:02x}:{i % 32:02x}.0",
                "vendor": vendor,
                "class": cls,
                "device": "1234",
                "iommu_group/type": "DMA-FQ",
            }
        )
    f.set_instances("pci.device", insts)
    return f
