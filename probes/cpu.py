"""cpu probe: NFD's cpu.cpuid, cpu.model and cpu.topology, from /proc/cpuinfo and sysfs.

NFD executes CPUID itself; we read the kernel's decoding of it in /proc/cpuinfo under the host
root (see cpuid_names.py for the name mapping), which also works on a fixture tree.

cpu.model.hypervisor: NFD asks CPUID leaf 0x40000000 for the hypervisor vendor. cpuinfo only
carries the `hypervisor` flag, so: no flag -> "none"; else /sys/hypervisor/type (xen -> "xenhvm");
else the DMI sys_vendor of well-known clouds/hypervisors; else "kvm", the commonest case (KVM,
Firecracker, EC2 Nitro, GCE), which is a guess and is said so in a probe note.
arm64: cpu.model has `vendor_id` from the CPU implementer code; family/id are left out, because
NFD's values there come from MIDR fields cpuinfo does not print in the same form.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.cpuid_names import nfd_arm64_cpuid, nfd_x86_cpuid

CPUINFO = "/proc/cpuinfo"
CPU_DEVICES = "/sys/bus/cpu/devices"
HYPERVISOR_TYPE = "/sys/hypervisor/type"
DMI_SYS_VENDOR = "/sys/devices/virtual/dmi/id/sys_vendor"

X86_VENDORS = {
    "GenuineIntel": "Intel",
    "AuthenticAMD": "AMD",
    "HygonGenuine": "Hygon",
    "CentaurHauls": "VIA",
    "VIA VIA VIA ": "VIA",
    "GenuineTMx86": "Transmeta",
    "TransmetaCPU": "Transmeta",
    "Geode by NSC": "NSC",
    "SiS SiS SiS ": "SiS",
    "RDCRDCRDCRDC": "RDC",
}
ARM_IMPLEMENTERS = {
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
    0x61: "Apple",
    0xC0: "Ampere",
}
# DMI sys_vendor prefix -> klauspost hypervisor vendor name (lower-cased as NFD reports it).
DMI_HYPERVISORS = (
    ("Microsoft Corporation", "msvm"),
    ("VMware", "vmware"),
    ("QEMU", "kvm"),
    ("Amazon EC2", "kvm"),
    ("Google", "kvm"),
    ("Xen", "xenhvm"),
    ("BHYVE", "bhyve"),
)


@dataclass
class CpuInfo:
    """What the probe needs from /proc/cpuinfo (first processor block; flags are per-CPU equal)."""

    vendor_id: str = ""
    family: str | None = None
    model: str | None = None
    flags: frozenset[str] = frozenset()
    arm_features: frozenset[str] = frozenset()
    arm_implementer: int | None = None
    physical_ids: set[str] = field(default_factory=set)
    processors: int = 0


def parse_cpuinfo(text: str) -> CpuInfo:
    """Parse /proc/cpuinfo (x86 or arm64). Tolerates junk lines; missing keys stay empty/None."""
    info = CpuInfo()
    first = True
    for block in text.split("\n\n"):
        kv: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                kv[key.strip()] = value.strip()
        if "processor" not in kv:
            continue
        info.processors += 1
        if "physical id" in kv:
            info.physical_ids.add(kv["physical id"])
        if not first:
            continue
        first = False
        info.vendor_id = kv.get("vendor_id", "")
        info.family = kv.get("cpu family")
        info.model = kv.get("model")
        info.flags = frozenset(kv.get("flags", "").split())
        info.arm_features = frozenset(kv.get("Features", "").split())
        impl = kv.get("CPU implementer")
        if impl:
            try:
                info.arm_implementer = int(impl, 0)
            except ValueError:
                info.arm_implementer = None
    return info


def cpu_vendor(info: CpuInfo) -> str:
    """klauspost's vendor name (Intel, AMD, ARM, Ampere ...), 'VendorUnknown' otherwise."""
    if info.vendor_id:
        return X86_VENDORS.get(info.vendor_id, "VendorUnknown")
    if info.arm_implementer is not None:
        return ARM_IMPLEMENTERS.get(info.arm_implementer, "VendorUnknown")
    return "VendorUnknown"


def hypervisor_name(flags: frozenset[str], hv_type: str | None, dmi_vendor: str | None) -> tuple[str, bool]:
    """(cpu.model.hypervisor value, whether it is a guess)."""
    if "hypervisor" not in flags:
        return "none", False
    if hv_type:
        t = hv_type.strip().lower()
        return ("xenhvm" if t == "xen" else t), False
    if dmi_vendor:
        for prefix, name in DMI_HYPERVISORS:
            if dmi_vendor.startswith(prefix):
                return name, False
    return "kvm", True


def topology(host: HostRoot) -> dict[str, str]:
    """NFD's cpu.topology: hardware_multithreading and socket_count; keys omitted when unreadable."""
    siblings_ok = True
    multithreading = False
    packages: set[str] = set()
    packages_ok = True
    cpus = host.listdir(CPU_DEVICES)
    for cpu in cpus:
        sib = host.read_line(f"{CPU_DEVICES}/{cpu}/topology/thread_siblings_list")
        if sib is None:
            siblings_ok = False
        elif "," in sib or "-" in sib:
            multithreading = True
        pkg = host.read_line(f"{CPU_DEVICES}/{cpu}/topology/physical_package_id")
        if pkg is None:
            packages_ok = False
        else:
            packages.add(pkg)
    out: dict[str, str] = {}
    if cpus and (siblings_ok or multithreading):
        out["hardware_multithreading"] = str(multithreading).lower()
    if cpus and packages_ok:
        out["socket_count"] = str(len(packages))
    return out


class CpuProbe(Probe):
    name = "cpu"
    features = (
        FeatureInfo(
            "cpu.cpuid",
            frozenset({"flag"}),
            source=CPUINFO,
            description="klauspost/cpuid names (AVX2, SSE42, AESNI ...) plus X86_64_V1..V4; "
            "arm64: HWCAP names (FP, ASIMD, SVE ...)",
        ),
        FeatureInfo(
            "cpu.model",
            frozenset({"attribute"}),
            attributes=(
                AttributeInfo("vendor_id", "string", CPUINFO, description="Intel, AMD, ARM, Ampere ..."),
                AttributeInfo("family", "int", CPUINFO),
                AttributeInfo("id", "int", CPUINFO, description="model number"),
                AttributeInfo(
                    "hypervisor",
                    "string",
                    f"{CPUINFO}, {HYPERVISOR_TYPE}, {DMI_SYS_VENDOR}",
                    description="none on bare metal, else kvm, vmware, msvm, xenhvm ...",
                ),
            ),
            source=CPUINFO,
        ),
        FeatureInfo(
            "cpu.topology",
            frozenset({"attribute"}),
            attributes=(
                AttributeInfo(
                    "hardware_multithreading", "bool", CPU_DEVICES + "/cpu*/topology/thread_siblings_list"
                ),
                AttributeInfo("socket_count", "int", CPU_DEVICES + "/cpu*/topology/physical_package_id"),
            ),
            source=CPU_DEVICES,
        ),
    )

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        f = out.features
        text = host.read_text(CPUINFO)
        if text is None:
            out.notes.append(f"{CPUINFO} unreadable: cpu.cpuid and cpu.model unknown")
        else:
            info = parse_cpuinfo(text)
            if info.flags:
                f.add_flags("cpu.cpuid", nfd_x86_cpuid(info.flags))
            elif info.arm_features:
                f.add_flags("cpu.cpuid", nfd_arm64_cpuid(info.arm_features))
            else:
                f.add_flags("cpu.cpuid", ())
                out.notes.append(f"{CPUINFO} has no flags/Features line: cpu.cpuid is empty")
            model = {"vendor_id": cpu_vendor(info)}
            if info.family is not None:
                model["family"] = info.family
            if info.model is not None:
                model["id"] = info.model
            if info.vendor_id:  # x86: CPUID has a hypervisor bit
                hv, guessed = hypervisor_name(
                    info.flags, host.read_line(HYPERVISOR_TYPE), host.read_line(DMI_SYS_VENDOR)
                )
                model["hypervisor"] = hv
                if guessed:
                    out.notes.append("hypervisor vendor not identifiable from files; assuming kvm")
            f.add_attributes("cpu.model", model)
        topo = topology(host)
        if topo:
            f.add_attributes("cpu.topology", topo)
        return out
