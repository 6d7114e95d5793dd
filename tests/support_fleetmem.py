"""Shared pieces of the issue-12 tests: fixture-host probe rounds and a hand-countable spec."""

from __future__ import annotations

import functools
from pathlib import Path

from nodecompat.hostroot import HostRoot
from nodecompat.probes.runner import ProbeRound, probe_once

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hosts"

# Set #1 needs an NVIDIA GPU and its driver loaded; set #2 an AMD GPU.
GPU_SPEC = """
version: v1alpha1
compatibilities:
- description: gpu
  rules:
  - name: nvidia
    matchFeatures:
    - feature: pci.device
      matchExpressions:
        vendor: {op: In, value: ["10de"]}
    - feature: kernel.loadedmodule
      matchExpressions:
        nvidia: {op: Exists}
- description: amd
  rules:
  - name: amd
    matchFeatures:
    - feature: pci.device
      matchExpressions:
        vendor: {op: In, value: ["1002"]}
"""

NVIDIA_ONLY = """
version: v1alpha1
compatibilities:
- description: nvidia driver
  rules:
  - name: driver
    matchFeatures:
    - feature: kernel.loadedmodule
      matchExpressions:
        nvidia: {op: Exists}
"""


@functools.cache
def fixture_round(name: str) -> ProbeRound:
    """One probe round of a fixture host tree (real probes)."""
    return probe_once(HostRoot(FIXTURES / name))
