"""Shared helpers for the engine tests: the conformance data, NFD-shaped feature builders, small specs."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from nodecompat.features import Features

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"


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
