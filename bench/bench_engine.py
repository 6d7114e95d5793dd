"""Engine throughput: parse time and in-process evaluations per second for a realistic spec.

The spec has 10 rules (several instance terms over pci.device, a version range, flags, matchName,
matchAny) evaluated against a node with 100 PCI devices. Prints figures; asserts nothing.
Run: .venv/bin/python bench/bench_engine.py
"""

from __future__ import annotations

import time

from nodecompat.engine.evaluate import evaluate
from nodecompat.engine.spec import parse_spec
from nodecompat.features import Features

SPEC = """
version: v1alpha1
compatibilities:
- description: GPU training node
  tag: gpu
  weight: 100
  rules:
  - name: nvidia h100
    matchFeatures:
    - feature: pci.device
      matchExpressions:
        vendor: {op: In, value: ["10de"]}
        class: {op: In, value: ["0302", "0300"]}
        device: {op: In, value: ["2330", "2331"]}
  - name: mellanox nic
    matchFeatures:
    - feature: pci.device
      matchExpressions:
        vendor: {op: In, value: ["15b3"]}
        sriov_totalvfs: {op: Gt, value: ["0"]}
  - name: iommu
    matchFeatures:
    - feature: pci.device
      matchExpressions:
        iommu_group/type: {op: InRegexp, value: ["^DMA"]}
  - name: kernel range
    matchFeatures:
    - feature: kernel.version
      matchExpressions:
        full: {op: GeLe, value: ["5.4", "6.9"], type: version}
  - name: driver modules
    matchFeatures:
    - feature: kernel.loadedmodule
      matchExpressions:
        nvidia: {op: Exists}
        nvidia_uvm: {op: Exists}
  - name: avx512
    matchFeatures:
    - feature: cpu.cpuid
      matchName: {op: InRegexp, value: ["^AVX512"]}
  - name: hugepages
    matchFeatures:
    - feature: memory.hugepages
      matchExpressions:
        enabled: {op: IsTrue}
  - name: any accelerator
    matchAny:
    - matchFeatures:
      - feature: pci.device
        matchExpressions: {class: {op: In, value: ["1200"]}}
    - matchFeatures:
      - feature: pci.device
        matchExpressions: {class: {op: In, value: ["0b40", "0302"]}}
  - name: numa
    matchFeatures:
    - feature: memory.numa
      matchExpressions:
        node_count: {op: Ge, value: ["2"]}
  - name: os
    matchFeatures:
    - feature: system.osrelease
      matchExpressions:
        ID: {op: In, value: ["ubuntu", "rhel"]}
        VERSION_ID.major: {op: Ge, value: ["20"]}
"""


def node(n_pci: int = 100) -> Features:
    f = Features()
    f.add_attributes(
        "kernel.version", {"full": "6.5.0-35-generic", "major": "6", "minor": "5", "revision": "0"}
    )
    f.add_flags("kernel.loadedmodule", ["nvidia", "nvidia_uvm", "mlx5_core", "vfio_pci"])
    f.add_flags("cpu.cpuid", ["AVX", "AVX2", "AVX512F", "AVX512BW", "SSE4", "VMX"])
    f.add_attributes("memory.hugepages", {"enabled": "true", "hugepages-2Mi": "1024"})
    f.add_attributes("memory.numa", {"is_numa": "true", "node_count": "2"})
    f.add_attributes("system.osrelease", {"ID": "ubuntu", "VERSION_ID": "22.04", "VERSION_ID.major": "22"})
    insts = []
    for i in range(n_pci):
        vendor, cls, dev = ("8086", "0604", "1234")
        if i % 25 == 7:
            vendor, cls, dev = ("10de", "0302", "2330")
        elif i % 25 == 11:
            vendor, cls, dev = ("15b3", "0207", "101b")
        attrs = {
            "address": f"0000:{i:02x}:00.0",
            "vendor": vendor,
            "class": cls,
            "device": dev,
            "subsystem_vendor": vendor,
            "subsystem_device": "0000",
            "iommu_group/type": "DMA-FQ",
        }
        if vendor == "15b3":
            attrs["sriov_totalvfs"] = "8"
        insts.append(attrs)
    f.set_instances("pci.device", insts)
    return f


def main() -> None:
    t0 = time.perf_counter()
    n_parse = 200
    for _ in range(n_parse):
        spec = parse_spec(SPEC)
    parse_ms = (time.perf_counter() - t0) / n_parse * 1000
    features = node()
    v = evaluate(spec, features)
    print(
        f"verdict: compatible={v.compatible} score={v.score} "
        f"rules={v.sets[0].rules_matched}/{v.sets[0].rules_total}"
    )
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 3.0:
        evaluate(spec, features)
        n += 1
    dt = time.perf_counter() - t0
    print(f"parse: {parse_ms:.2f} ms per spec ({len(SPEC)} bytes, 10 rules)")
    print(f"evaluate: {n / dt:.0f} evaluations/s ({dt / n * 1000:.2f} ms each) against 100 PCI devices")


if __name__ == "__main__":
    main()
