"""cpu.model.hypervisor as NFD reports it, from CPUID on the real host and from evidence elsewhere.

NFD (source/cpu/cpu.go getHypervisor): on x86 and arm64, `cpuid.CPU.VM()` (klauspost/cpuid: CPUID
leaf 1 ECX bit 31, which only x86 sets) decides; a VM gets the vendor of CPUID leaf 0x40000000
(klauspost vendorMapping: KVMKVMKVM -> KVM, Microsoft Hv -> MSVM, ...) lower-cased, or the raw
signature with characters outside [-A-Za-z0-9_.] replaced by `_` ("unknown" if empty); a machine
without the bit gets "none". So every arm64 node reports "none". s390x reads /proc/sysinfo
"Control Program:" (sanitised; "none" when there is no such line).

How we establish it:
- the CPUID bit itself is /proc/cpuinfo's `hypervisor` flag (the kernel prints CPUID.1:ECX[31]);
  without the flag the answer is "none", as NFD's;
- on the real root `/`, CPUID leaf 0x40000000 is read through /dev/cpu/0/cpuid (hostcpu.py): exact;
- otherwise host files, each naming one hypervisor interface the guest kernel found:
  /sys/hypervisor/type `xen` or a `xen` clocksource -> Xen (XenVMMXenVMM -> xenhvm);
  Hyper-V's VMBus (/sys/bus/vmbus/devices) or the `hyperv_clocksource_tsc_page` clocksource, or DMI
  `Microsoft Corporation` / `Virtual Machine` -> msvm; the `kvm-clock` clocksource (the kernel
  offers it only after finding the KVMKVMKVM signature) -> kvm; DMI sys_vendor `VMware, Inc.` ->
  vmware; DMI `BHYVE` -> bhyve.
  When the files name no hypervisor, or more than one (KVM or Xen offering Hyper-V
  enlightenments put "Microsoft Hv" at 0x40000000 and their own signature at 0x40000100, so the
  leaf NFD reads could be either), the attribute is left out and the probe status says why.
  DMI vendors that do not name the CPUID signature (QEMU: KVM or TCG; Amazon EC2; Google) are
  not used on their own.
"""

from __future__ import annotations

import re

from nodecompat.hostroot import HostRoot
from nodecompat.probes.hostcpu import CpuidFn, CpuInfo, regs_string

HYPERVISOR_TYPE = "/sys/hypervisor/type"
DMI_SYS_VENDOR = "/sys/devices/virtual/dmi/id/sys_vendor"
DMI_PRODUCT_NAME = "/sys/devices/virtual/dmi/id/product_name"
VMBUS_DEVICES = "/sys/bus/vmbus/devices"
CLOCKSOURCES = "/sys/devices/system/clocksource/clocksource0/available_clocksource"
PROC_SYSINFO = "/proc/sysinfo"

# klauspost/cpuid cpuid.go vendorMapping, the hypervisor (and other) signatures -> Vendor.String().
VENDOR_MAPPING = {
    "AMDisbetter!": "AMD",
    "AuthenticAMD": "AMD",
    "CentaurHauls": "VIA",
    "GenuineIntel": "Intel",
    "TransmetaCPU": "Transmeta",
    "GenuineTMx86": "Transmeta",
    "Geode by NSC": "NSC",
    "VIA VIA VIA ": "VIA",
    "KVMKVMKVM": "KVM",
    "Linux KVM Hv": "KVM",
    "TCGTCGTCGTCG": "QEMU",
    "Microsoft Hv": "MSVM",
    "VMwareVMware": "VMware",
    "XenVMMXenVMM": "XenHVM",
    "bhyve bhyve ": "Bhyve",
    "HygonGenuine": "Hygon",
    "Vortex86 SoC": "SiS",
    "SiS SiS SiS ": "SiS",
    "RiseRiseRise": "SiS",
    "Genuine  RDC": "RDC",
    "QNXQVMBSQG": "QNX",
    "ACRNACRNACRN": "ACRN",
    "SRESRESRESRE": "SRE",
    "Apple VZ": "Apple",
}
_FORBIDDEN = re.compile(r"[^-A-Za-z0-9_.]+")


def from_signature(signature: str) -> str:
    """NFD getHypervisorFromCPUID(): known vendor lower-cased, else the sanitised raw string, else 'unknown'."""
    vendor = VENDOR_MAPPING.get(signature)
    if vendor is not None:
        return vendor.lower()
    clean = _FORBIDDEN.sub("_", signature)
    return clean or "unknown"


def from_sysinfo(text: str) -> str:
    """NFD getHypervisorFromProcSysinfo() (s390x): the first 'Control Program:' value, sanitised; else none."""
    for line in text.split("\n"):
        if "Control Program:" in line:
            value = line.split(":", 1)[1].strip()
            return _FORBIDDEN.sub("_", value) if value else "none"
    return "none"


def file_evidence(host: HostRoot) -> dict[str, list[str]]:
    """Hypervisor name -> the host files that name it (see the module docstring)."""
    found: dict[str, list[str]] = {}

    def add(name: str, why: str) -> None:
        found.setdefault(name, []).append(why)

    hv_type = (host.read_line(HYPERVISOR_TYPE) or "").strip().lower()
    if hv_type == "xen":
        add("xenhvm", f"{HYPERVISOR_TYPE} = xen")
    clocks = set((host.read_line(CLOCKSOURCES) or "").split())
    if "xen" in clocks:
        add("xenhvm", f"{CLOCKSOURCES} has xen")
    if "kvm-clock" in clocks:
        add("kvm", f"{CLOCKSOURCES} has kvm-clock")
    if "hyperv_clocksource_tsc_page" in clocks or "hyperv_clocksource_msr" in clocks:
        add("msvm", f"{CLOCKSOURCES} has a hyperv clocksource")
    if host.listdir(VMBUS_DEVICES):
        add("msvm", f"{VMBUS_DEVICES} lists Hyper-V VMBus devices")
    vendor = host.read_line(DMI_SYS_VENDOR) or ""
    product = host.read_line(DMI_PRODUCT_NAME) or ""
    if vendor.startswith("VMware"):
        add("vmware", f"{DMI_SYS_VENDOR} = {vendor}")
    elif vendor == "Microsoft Corporation" and product == "Virtual Machine":
        add("msvm", f"DMI {vendor} / {product}")
    elif vendor.startswith("Xen"):
        add("xenhvm", f"{DMI_SYS_VENDOR} = {vendor}")
    elif vendor.startswith("BHYVE"):
        add("bhyve", f"{DMI_SYS_VENDOR} = {vendor}")
    return found


def hypervisor(host: HostRoot, arch: str | None, info: CpuInfo, cpuid: CpuidFn | None) -> tuple[str | None, str]:
    """(cpu.model.hypervisor value or None, probe note ("" when nothing to say)) for this host."""
    if arch == "s390x":
        text = host.read_text(PROC_SYSINFO)
        if text is None:
            return None, f"{PROC_SYSINFO} unreadable: cpu.model.hypervisor left out (NFD reads it on s390x)"
        return from_sysinfo(text), ""
    if arch != "amd64":
        # klauspost/cpuid sets HYPERVISOR only from x86 CPUID leaf 1, so VM() is false: NFD says "none".
        return "none", ""
    cpuid_note = ""
    if cpuid is not None:
        try:
            if not cpuid(1, 0)[2] & (1 << 31):
                return "none", ""
            _, b, c, d = cpuid(0x40000000, 0)
            return from_signature(regs_string(b, c, d)), ""
        except OSError as exc:
            cpuid_note = f"CPUID device read failed ({exc}); "
    if "hypervisor" not in info.flags:
        return "none", ""
    evidence = file_evidence(host)
    if len(evidence) == 1:
        return next(iter(evidence)), ""
    if not evidence:
        return None, (
            f"{cpuid_note}guest (cpuinfo flag 'hypervisor') but no host file names the hypervisor "
            f"(checked {HYPERVISOR_TYPE}, {CLOCKSOURCES}, {VMBUS_DEVICES}, DMI sys_vendor) and CPUID leaf "
            "0x40000000 is readable only on the real root with /dev/cpu/0/cpuid: cpu.model.hypervisor left out"
        )
    listed = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(evidence.items()))
    return None, (
        f"{cpuid_note}host files name more than one hypervisor interface ({listed}); which one CPUID leaf "
        "0x40000000 reports cannot be told from files: cpu.model.hypervisor left out"
    )
