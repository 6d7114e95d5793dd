"""cpu probe: NFD's cpu.cpuid, cpu.model, cpu.topology and cpu.coprocessor, from /proc/cpuinfo and sysfs.

NFD executes CPUID itself; we read the kernel's decoding of it in /proc/cpuinfo under the host
root (see cpuid_names.py for the name mapping), which also works on a fixture tree.

cpu.model, as NFD's getCPUModel() (source/cpu/cpu.go) with klauspost/cpuid:
- x86: vendor_id from cpuinfo `vendor_id` through klauspost's vendorMapping; family/id are the
  kernel's decoding of CPUID leaf 1 (base + extended family; extended model added for family
  >= 6), which equals klauspost's familyModel() on every x86 CPU made (families 6, 0xF+);
- arm64 (klauspost detect_arm64.go): MIDR_EL1 from /sys/devices/system/cpu/cpu0/regs/identification/
  midr_el1, else rebuilt from cpuinfo (implementer, variant, part, revision; the architecture field
  is 0xF on every Armv8+ core, which the kernel prints as the constant "CPU architecture: 8");
  vendor_id from the implementer, family = MIDR[23:16] (variant << 4 | 0xF), id = MIDR[15:0]
  (part << 4 | revision). klauspost reads MIDR only when HWCAP_CPUID (cpuinfo `cpuid`) is set;
  without it NFD reports VendorUnknown / 0 / 0, and so do we;
- ppc64le and 32-bit arm: klauspost detects nothing: VendorUnknown / 0 / 0; s390x: NFD's
  getS390xAttributes() over /proc/cpuinfo;
- hypervisor: see hypervisor.py (CPUID leaf 0x40000000 on the real root, host-file evidence
  elsewhere, "none" on arm64 as NFD reports; left out with a note when nothing establishes it).
cpu.topology is always published, empty when a topology file is unreadable (discoverTopology()).
cpu.coprocessor is always published: nx_gzip on ppc64le (coprocessor_ppc64le.go), empty elsewhere.
"""

from __future__ import annotations

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.cpuid_names import cached_nfd_cpuid
from nodecompat.probes.hostcpu import (
    CPUINFO,
    CpuidFn,
    CpuInfo,
    cpuid_reader,
    host_arch,
    parse_cpuinfo,
    read_cpuinfo,
    s390x_model,
)
from nodecompat.probes.hypervisor import (
    CLOCKSOURCES,
    DMI_SYS_VENDOR,
    HYPERVISOR_TYPE,
    VENDOR_MAPPING,
    VMBUS_DEVICES,
    hypervisor,
)
from nodecompat.probes.textkept import TextKept

__all__ = ["CpuInfo", "CpuProbe", "arm64_model", "parse_cpuinfo", "s390x_model", "topology"]

CPU_DEVICES = "/sys/bus/cpu/devices"
MIDR = "/sys/devices/system/cpu/cpu0/regs/identification/midr_el1"
NX_GZIP = "/sys/devices/vio/ibm,compression-v1/nx_gzip_caps"

# klauspost/cpuid detect_arm64.go addInfo(): MIDR implementer -> Vendor.String().
ARM_IMPLEMENTERS = {
    0xC0: "Ampere",
    0x41: "ARM",
    0x42: "Broadcom",
    0x43: "Cavium",
    0x44: "DEC",
    0x46: "Fujitsu",
    0x49: "Infineon",
    0x4D: "Motorola",
    0x4E: "NVIDIA",
    0x50: "AMCC",
    0x51: "Qualcomm",
    0x56: "Marvell",
    0x69: "Intel",
}


def midr_from_cpuinfo(info: CpuInfo) -> int | None:
    """MIDR_EL1 rebuilt from cpuinfo's fields, or None when one is missing or not AArch64."""
    parts = (info.arm_implementer, info.arm_variant, info.arm_part, info.arm_revision)
    if any(p is None for p in parts) or info.arm_architecture != "8":
        return None
    impl, variant, part, rev = (p or 0 for p in parts)
    return (impl & 0xFF) << 24 | (variant & 0xF) << 20 | 0xF << 16 | (part & 0xFFF) << 4 | (rev & 0xF)


def arm64_model(info: CpuInfo, midr: int | None) -> dict[str, str]:
    """klauspost/cpuid's VendorID/Family/Model on arm64 for this MIDR (NFD's vendor_id, family, id)."""
    if "cpuid" not in info.arm_features or midr is None:
        return {"vendor_id": "VendorUnknown", "family": "0", "id": "0"}
    return {
        "vendor_id": ARM_IMPLEMENTERS.get((midr >> 24) & 0xFF, "VendorUnknown"),
        "family": str((midr >> 16) & 0xFF),
        "id": str(midr & 0xFFFF),
    }


# (CPU_DEVICES, names...) -> each CPU's (thread_siblings_list path, physical_package_id path), once per distinct
# listing (a 192-CPU host: 384 paths not built again every round)
_TOPOLOGY_PLANS: TextKept[tuple[tuple[str, str], ...]] = TextKept(8, 64 << 10)


def _topology_plan(cpus: list[str]) -> tuple[tuple[str, str], ...]:
    return tuple((f"{CPU_DEVICES}/{cpu}/topology/thread_siblings_list",
                  f"{CPU_DEVICES}/{cpu}/topology/physical_package_id") for cpu in cpus)


def topology(host: HostRoot) -> dict[str, str]:
    """NFD discoverTopology(): {} when the cpu list or any topology file is unreadable."""
    if not host.is_dir(CPU_DEVICES):
        return {}
    multithreading = False
    packages: set[str] = set()
    cpus = host.listdir(CPU_DEVICES)
    read_text = host.read_text
    for sib_path, pkg_path in _TOPOLOGY_PLANS.get((CPU_DEVICES, *cpus), lambda: _topology_plan(cpus)):
        sib = read_text(sib_path)
        pkg = read_text(pkg_path)
        if sib is None or pkg is None:
            return {}
        multithreading = multithreading or "," in sib or "-" in sib
        packages.add(pkg.strip())
    return {"hardware_multithreading": str(multithreading).lower(), "socket_count": str(len(packages))}


class CpuProbe(Probe):
    name = "cpu"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    features = (
        FeatureInfo(
            "cpu.cpuid",
            frozenset({"flag", "attribute"}),
            attributes=None,
            source=CPUINFO,
            description="flags: klauspost/cpuid names (AVX2, SSE42, AESNI ...) plus X86_64_V1..V4; "
            "arm64: HWCAP names (FP, ASIMD, SVE ...); attribute AVX10_VERSION (x86, CPUID leaf 0x24, "
            "real root only)",
            absent="absent when /proc/cpuinfo is unreadable; the attribute set only on x86 with CPUID",
        ),
        FeatureInfo(
            "cpu.model",
            frozenset({"attribute"}),
            attributes=(
                AttributeInfo("vendor_id", "string", CPUINFO, description="Intel, AMD, ARM, Ampere ..."),
                AttributeInfo("family", "int", f"{CPUINFO}, {MIDR}", description="arm64: MIDR[23:16]"),
                AttributeInfo("id", "int", f"{CPUINFO}, {MIDR}", description="model number; arm64: MIDR[15:0]"),
                AttributeInfo(
                    "hypervisor",
                    "string",
                    f"CPUID 0x40000000 (real root), {HYPERVISOR_TYPE}, {CLOCKSOURCES}, {VMBUS_DEVICES}, "
                    f"{DMI_SYS_VENDOR}",
                    description="none on bare metal and on every arm64 node, else kvm, vmware, msvm, xenhvm ...; "
                    "absent when no evidence names it",
                ),
            ),
            source=CPUINFO,
            absent="absent when /proc/cpuinfo is unreadable",
        ),
        FeatureInfo(
            "cpu.topology",
            frozenset({"attribute"}),
            attributes=(
                AttributeInfo("hardware_multithreading", "bool", CPU_DEVICES + "/cpu*/topology/thread_siblings_list"),
                AttributeInfo("socket_count", "int", CPU_DEVICES + "/cpu*/topology/physical_package_id"),
            ),
            source=CPU_DEVICES,
            absent="empty (NFD discoverTopology returns {} on any read error)",
        ),
        FeatureInfo(
            "cpu.coprocessor",
            frozenset({"attribute"}),
            attributes=(AttributeInfo("nx_gzip", "bool", NX_GZIP, description="ppc64le only; true when present"),),
            source=NX_GZIP,
            absent="empty (always published; nx_gzip only on ppc64le)",
        ),
    )

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        f = out.features
        info = read_cpuinfo(host)  # what the probe uses of /proc/cpuinfo (hostcpu.cpuinfo_facts)
        arch, _ = host_arch(host, info)
        if info is None:
            out.notes.append(f"{CPUINFO} unreadable: cpu.cpuid and cpu.model unknown")
        else:
            cpuid = cpuid_reader(host) if arch == "amd64" else None
            self._cpuid(f, out.notes, info, arch, cpuid)
            model = self._model(host, info, arch)
            hv, note = hypervisor(host, arch, info, cpuid)
            if hv is not None:
                model["hypervisor"] = hv
            if note:
                out.notes.append(note)
            f.add_attributes("cpu.model", model)
        f.add_attributes("cpu.topology", topology(host))
        if arch == "ppc64le" and host.exists(NX_GZIP):
            f.add_attributes("cpu.coprocessor", {"nx_gzip": "true"})
        else:
            f.add_attributes("cpu.coprocessor", {})
        return out

    @staticmethod
    def _cpuid(f: Features, notes: list[str], info: CpuInfo, arch: str | None, cpuid: CpuidFn | None) -> None:
        if info.flags:
            f.add_flags("cpu.cpuid", cached_nfd_cpuid(frozenset(info.flags), False))
        elif info.arm_features:
            f.add_flags("cpu.cpuid", cached_nfd_cpuid(frozenset(info.arm_features), True))
        else:
            f.add_flags("cpu.cpuid", ())
            notes.append(f"{CPUINFO} has no flags/Features line: cpu.cpuid is empty")
        if arch != "amd64":
            return  # getCpuidAttributes() returns nil off x86: no attribute set
        if cpuid is None:
            notes.append(
                "cpu.cpuid attribute AVX10_VERSION needs CPUID leaf 0x24 (real root with /dev/cpu/0/cpuid): left out"
            )
            return
        try:
            max_leaf = cpuid(0, 0)[0]
            attrs = {}
            if max_leaf >= 0x24 and cpuid(7, 1)[3] & (1 << 19):  # klauspost supportAVX10(): AVX10 bit
                level = cpuid(0x24, 0)[1] & 0xFF
                if level > 0:
                    attrs["AVX10_VERSION"] = str(level)
            f.add_attributes("cpu.cpuid", attrs)
        except OSError as exc:
            notes.append(f"CPUID device read failed ({exc}): cpu.cpuid attribute AVX10_VERSION left out")

    @staticmethod
    def _model(host: HostRoot, info: CpuInfo, arch: str | None) -> dict[str, str]:
        if arch == "amd64":
            model = {"vendor_id": VENDOR_MAPPING.get(info.vendor_id, "VendorUnknown")}
            if info.family is not None:
                model["family"] = info.family
            if info.model is not None:
                model["id"] = info.model
            return model
        if arch == "arm64":
            raw = host.read_line(MIDR)
            midr = None
            if raw:
                try:
                    midr = int(raw, 16)
                except ValueError:
                    midr = None
            return arm64_model(info, midr if midr is not None else midr_from_cpuinfo(info))
        if arch == "s390x":  # cpuinfo_facts computed it for s390x-shaped and unrecognised cpuinfo
            return dict(info.s390x) if info.s390x is not None else s390x_model("")
        return {"vendor_id": "VendorUnknown", "family": "0", "id": "0"}
