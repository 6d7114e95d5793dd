"""Parsing NVIDIA's procfs files, and the two tables used when NVML is not available.

Without NVML (a container without libnvidia-ml, or a fixture tree) the driver still leaves text
behind: /proc/driver/nvidia/version ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15 ..."),
/sys/module/nvidia/version ("550.54.15") and /proc/driver/nvidia/gpus/<bdf>/information
("Model: ...", "Bus Location: ..."). Two facts GFD reads from NVML are not in any file:
- the CUDA version the driver supports: derived from the driver version with NVIDIA's table of
  minimum driver versions per CUDA release (CUDA toolkit release notes, "CUDA Toolkit and
  Corresponding Driver Versions", Linux x86_64 GA drivers);
- the compute capability: derived from the product name for well-known data-centre families.
Both are marked as derived in the docs; with NVML the real values are used.
"""

from __future__ import annotations

import re

_NVRM = re.compile(r"NVRM version:.*?Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)")

# (minimum Linux driver version, CUDA version), newest first.
CUDA_BY_DRIVER: tuple[tuple[tuple[int, ...], str], ...] = (
    ((580, 65, 6), "13.0"),
    ((575, 51, 3), "12.9"),
    ((570, 26), "12.8"),
    ((560, 28, 3), "12.6"),
    ((555, 42, 2), "12.5"),
    ((550, 54, 14), "12.4"),
    ((545, 23, 6), "12.3"),
    ((535, 54, 3), "12.2"),
    ((530, 30, 2), "12.1"),
    ((525, 60, 13), "12.0"),
    ((520, 61, 5), "11.8"),
    ((515, 43, 4), "11.7"),
    ((510, 39, 1), "11.6"),
    ((495, 29, 5), "11.5"),
    ((470, 42, 1), "11.4"),
    ((465, 19, 1), "11.3"),
    ((460, 27, 3), "11.2"),
    ((455, 23), "11.1"),
    ((450, 36, 6), "11.0"),
)

# Product-name pattern -> (major, minor) compute capability.
COMPUTE_BY_PRODUCT: tuple[tuple[re.Pattern[str], tuple[int, int]], ...] = (
    (re.compile(r"\b(GB200|B200|B100)\b"), (10, 0)),
    (re.compile(r"\b(GH200|H200|H100|H800|H20)\b"), (9, 0)),
    (re.compile(r"\b(L40S|L40|L20|L4)\b"), (8, 9)),
    (re.compile(r"\b(A100|A800|A30)\b"), (8, 0)),
    (re.compile(r"\b(A40|A16|A10|A2)\b"), (8, 6)),
    (re.compile(r"\bT4\b"), (7, 5)),
    (re.compile(r"\bV100\b"), (7, 0)),
)


def parse_nvrm_version(text: str) -> str | None:
    """Driver version from /proc/driver/nvidia/version, or None."""
    m = _NVRM.search(text)
    return m.group(1) if m else None


def parse_information(text: str) -> dict[str, str]:
    """`Key: value` lines of /proc/driver/nvidia/gpus/<bdf>/information."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def information_model(text: str) -> str | None:
    """parse_information(text).get("Model") without building the dict of every line: the value of the
    last `Model: ...` line (key and value stripped, as there), None when no line has that key. The gpu
    probe publishes only the model of that file (gpu.device `product`)."""
    if "Model" not in text:
        return None
    for line in reversed(text.splitlines()):
        if "Model" in line:
            key, sep, value = line.partition(":")
            if sep and key.strip() == "Model":
                return value.strip()
    return None


def split_version(version: str) -> dict[str, str]:
    """'550.54.15' -> {major: 550, minor: 54, revision: 15}; leading zeros kept (as GFD does)."""
    parts = version.strip().split(".")
    out = {}
    for key, value in zip(("major", "minor", "revision"), parts, strict=False):
        if value.isdigit():
            out[key] = value
        else:
            break
    return out


def _as_tuple(version: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in version.strip().split("."))
    except ValueError:
        return None


def cuda_for_driver(version: str) -> str | None:
    """Newest CUDA version the NVIDIA driver `version` supports, per NVIDIA's table; None if older/bad."""
    v = _as_tuple(version)
    if v is None:
        return None
    for minimum, cuda in CUDA_BY_DRIVER:
        if v >= minimum:
            return cuda
    return None


def compute_capability(product: str) -> tuple[int, int] | None:
    for pattern, cc in COMPUTE_BY_PRODUCT:
        if pattern.search(product):
            return cc
    return None


def cuda_from_nvml(value: int) -> str:
    """nvmlSystemGetCudaDriverVersion() int (12040) -> '12.4'."""
    return f"{value // 1000}.{(value % 1000) // 10}"
