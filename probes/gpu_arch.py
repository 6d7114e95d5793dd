"""GPU architecture names, as NVIDIA's DRA driver and AMD's tooling name them.

NVIDIA: the NVIDIA DRA driver (k8s-dra-driver-gpu, cmd/gpu-kubelet-plugin/deviceinfo.go) publishes
`architecture` from go-nvlib's GetArchitectureAsString() (nvmlDeviceGetArchitecture: Kepler,
Maxwell, Pascal, Volta, Turing, Ampere, "Ada Lovelace", Hopper, Blackwell) and
`cudaComputeCapability` as "<major>.<minor>" (GetCudaComputeCapabilityAsString). With NVML (real
root) we ask NVML the same questions. Without it the architecture follows from the compute
capability, by NVIDIA's table (CUDA C++ Programming Guide, "Compute Capabilities"; GFD's
getArchFamily() in k8s-device-plugin uses the same split): 3.x Kepler, 5.x Maxwell, 6.x Pascal,
7.0/7.2 Volta, 7.5 Turing, 8.0/8.6/8.7 Ampere, 8.9 Ada Lovelace, 9.x Hopper, 10.x/11.x/12.x
Blackwell.
AMD: the amdgpu KFD topology (/sys/class/kfd/kfd/topology/nodes/<n>/properties) gives each GPU's
`gfx_target_version` (90402 -> gfx942) and its PCI location (`domain`, `location_id` =
bus << 8 | device << 3 | function). The gfx target names the architecture (LLVM AMDGPU processor
table): gfx908 CDNA, gfx90a CDNA2, gfx940/941/942 CDNA3, gfx950 CDNA4, gfx90x GCN5 (Vega),
gfx101x RDNA, gfx103x RDNA2, gfx110x/115x RDNA3, gfx120x RDNA4. A target not in the table is
left out of `architecture` (the `gfx_target` attribute still says it).
"""

from __future__ import annotations

from nodecompat.hostroot import HostRoot

KFD_NODES = "/sys/class/kfd/kfd/topology/nodes"

# pynvml NVML_DEVICE_ARCH_* -> go-nvlib GetArchitectureAsString()
NVML_ARCH = {
    2: "Kepler",
    3: "Maxwell",
    4: "Pascal",
    5: "Volta",
    6: "Turing",
    7: "Ampere",
    8: "Ada Lovelace",
    9: "Hopper",
    10: "Blackwell",
}


def nvidia_architecture(major: int, minor: int) -> str | None:
    """Architecture of an NVIDIA compute capability, or None for one not in NVIDIA's table."""
    if major == 3:
        return "Kepler"
    if major == 5:
        return "Maxwell"
    if major == 6:
        return "Pascal"
    if major == 7:
        return "Volta" if minor < 5 else "Turing"
    if major == 8:
        return "Ada Lovelace" if minor == 9 else "Ampere"
    if major == 9:
        return "Hopper"
    if major in (10, 11, 12):
        return "Blackwell"
    return None


def gfx_target(version: int) -> str:
    """KFD gfx_target_version (90402) -> LLVM processor name (gfx942); minor/stepping are hex digits."""
    major, minor, step = version // 10000, (version // 100) % 100, version % 100
    return f"gfx{major}{minor:x}{step:x}"


def amd_architecture(target: str) -> str | None:
    if target in ("gfx940", "gfx941", "gfx942"):
        return "CDNA3"
    if target == "gfx950":
        return "CDNA4"
    if target == "gfx90a":
        return "CDNA2"
    if target == "gfx908":
        return "CDNA"
    if target in ("gfx900", "gfx902", "gfx904", "gfx906", "gfx909", "gfx90c"):
        return "GCN5"
    for prefix, arch in (("gfx101", "RDNA"), ("gfx103", "RDNA2"), ("gfx110", "RDNA3"), ("gfx115", "RDNA3"),
                         ("gfx120", "RDNA4")):  # fmt: skip
        if target.startswith(prefix):
            return arch
    return None


def kfd_targets(host: HostRoot) -> dict[str, str]:
    """PCI address (0000:c1:00.0) -> gfx target of each KFD GPU node (CPU nodes have version 0)."""
    out: dict[str, str] = {}
    for _name, path in host.iterdir(KFD_NODES):
        text = host.read_text(f"{path}/properties")
        if not text:
            continue
        props: dict[str, int] = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            try:
                props[key] = int(value)
            except ValueError:
                continue
        version, loc = props.get("gfx_target_version", 0), props.get("location_id")
        if not version or loc is None:
            continue
        domain = props.get("domain", 0)
        address = f"{domain:04x}:{loc >> 8:02x}:{(loc >> 3) & 0x1F:02x}.{loc & 0x7:x}"
        out[address] = gfx_target(version)
    return out
