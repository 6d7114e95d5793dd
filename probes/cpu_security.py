"""cpu_security probe: NFD's cpu.security (SGX, TDX, SEV, SEV-ES, SEV-SNP, s390x Secure Execution).

NFD (source/cpu/cpu.go Discover) always publishes cpu.security = discoverSecurity(); each key is
present only when true. Derivations (security_amd64.go, security_s390x.go, security_stub.go):
- sev.enabled / sev.es.enabled / sev.snp.enabled: /sys/module/kvm_amd/parameters/{sev,sev_es,sev_snp}
  exists and its first byte is `1` or `Y` (sevParameterEnabled); read exactly so here;
- sev.asids / sev.encrypted_state_ids / tdx.total_keys: the first line of
  /sys/fs/cgroup/misc.capacity (else /sys/fs/cgroup/misc/misc.capacity) starting with `sev`,
  `sev_es`, `tdx`, second space-separated field (getCgroupMiscCapacity); read exactly so here;
- tdx.enabled: /sys/module/kvm_intel/parameters/tdx is exactly "Y\n";
- tdx.protected: klauspost/cpuid TDX_GUEST (CPUID leaf 0x21 "IntelTDX    ", or Hyper-V leaf
  0x4000000C EBX 0xbe3). On the real root with /dev/cpu/0/cpuid those leaves are read; elsewhere the
  kernel's `tdx_guest` cpuinfo flag (set from leaf 0x21 by every kernel that can boot in a TD) says
  true, its absence false, except on a Hyper-V guest (VMBus present), whose TDX isolation is only
  in leaf 0x4000000C: then tdx.protected is left out and the status says so;
- sgx.enabled / sgx.epc: NFD sums the EPC section sizes of CPUID leaf 0x12 (klauspost hasSGX) and
  reports them when > 0. The kernel's `sgx` cpuinfo flag is set when CPUID has SGX and the BIOS
  enabled it (a BIOS-disabled SGX has no EPC, so NFD reports nothing either); the EPC total is the
  sum of /sys/devices/system/node/node*/x86/sgx_total_bytes (Linux >= 6.0), which the kernel fills
  from the same leaf 0x12 sections. With the flag but without those files, sgx.* are left out and
  the status says so. (Known gap: a kernel built without CONFIG_X86_SGX hides the flag although
  CPUID, and so NFD, would report SGX.)
- s390x se.enabled: /sys/firmware/uv/prot_virt_host is exactly "1\n".
On other architectures (arm64, ppc64le) NFD's stub returns nil: cpu.security is published empty.
"""

from __future__ import annotations

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.hostcpu import CPUINFO, CpuidFn, CpuInfo, cpuid_reader, host_arch, read_cpuinfo, regs_string
from nodecompat.probes.hypervisor import VMBUS_DEVICES

KVM_AMD = "/sys/module/kvm_amd/parameters"
KVM_INTEL_TDX = "/sys/module/kvm_intel/parameters/tdx"
MISC_CAPACITY = ("/sys/fs/cgroup/misc.capacity", "/sys/fs/cgroup/misc/misc.capacity")
NODES = "/sys/devices/system/node"
PROT_VIRT_HOST = "/sys/firmware/uv/prot_virt_host"
_MISC = " or ".join(MISC_CAPACITY)


def sev_parameter_enabled(host: HostRoot, parameter: str) -> bool:
    """NFD sevParameterEnabled(): the kvm_amd parameter's first byte is '1' or 'Y'."""
    raw = host.read_bytes(f"{KVM_AMD}/{parameter}")
    return raw is not None and raw[:1] in (b"1", b"Y")


def misc_capacity(text: str, resource: str) -> int:
    """NFD retrieveCgroupMiscCapacityValue(): first line starting with `resource`, 2nd field; -1 if none/bad."""
    for line in text.split("\n"):
        if not line.startswith(resource):
            continue
        fields = line.split(" ")
        try:
            return int(fields[1])
        except (IndexError, ValueError):
            return -1
    return -1


def cgroup_misc_capacity(host: HostRoot, resource: str) -> int:
    """NFD getCgroupMiscCapacity(): the first misc.capacity file that opens decides."""
    for path in MISC_CAPACITY:
        text = host.read_text(path)
        if text is not None:
            return misc_capacity(text, resource)
    return -1


def sgx_epc_bytes(host: HostRoot) -> int | None:
    """Sum of node*/x86/sgx_total_bytes, or None when no node has the file."""
    total, seen = 0, False
    for name, path in host.iterdir(NODES):
        if not (name.startswith("node") and name[4:].isdigit()):
            continue
        v = host.read_line(f"{path}/x86/sgx_total_bytes")
        if v is not None and v.isdigit():
            total += int(v)
            seen = True
    return total if seen else None


def tdx_guest_cpuid(cpuid: CpuidFn) -> bool:
    """klauspost/cpuid TDX_GUEST from CPUID (leaf 0x4000000C EBX 0xbe3 when max leaf >= 0x20; leaf 0x21)."""
    max_leaf = cpuid(0, 0)[0]
    if max_leaf >= 0x20 and cpuid(0x4000000C, 0)[1] == 0xBE3:
        return True
    if max_leaf >= 0x21:
        _, b, c, d = cpuid(0x21, 0)
        return regs_string(b, d, c) == "IntelTDX    "
    return False


def x86_security(host: HostRoot, info: CpuInfo | None, cpuid: CpuidFn | None, notes: list[str]) -> dict[str, str]:
    """security_amd64.go discoverSecurity(), from host files (and CPUID on the real root)."""
    elems: dict[str, str] = {}
    if info is None:
        notes.append(f"{CPUINFO} unreadable: sgx.* not established, left out")
    elif "sgx" in info.flags:
        epc = sgx_epc_bytes(host)
        if epc is None:
            notes.append(
                f"cpuinfo has sgx but no {NODES}/node*/x86/sgx_total_bytes (kernel < 6.0): the EPC size NFD "
                "reads from CPUID leaf 0x12 is unknown, sgx.enabled and sgx.epc left out"
            )
        elif epc > 0:
            elems["sgx.enabled"] = "true"
            elems["sgx.epc"] = str(epc)
    if host.read_text(KVM_INTEL_TDX) == "Y\n":
        elems["tdx.enabled"] = "true"
        keys = cgroup_misc_capacity(host, "tdx")
        if keys > -1:
            elems["tdx.total_keys"] = str(keys)
    protected: bool | None
    if cpuid is not None:
        try:
            protected = tdx_guest_cpuid(cpuid)
        except OSError as exc:
            protected = None
            notes.append(f"CPUID device read failed ({exc}): tdx.protected left out")
    elif info is None:
        protected = None
        notes.append(f"{CPUINFO} unreadable and no CPUID device: tdx.protected left out")
    elif "tdx_guest" in info.flags:
        protected = True
    elif "hypervisor" in info.flags and host.listdir(VMBUS_DEVICES) and info.vendor_id == "GenuineIntel":
        protected = None
        notes.append(
            "Hyper-V guest on Intel: TDX isolation shows only in CPUID leaf 0x4000000C (readable on the real "
            "root with /dev/cpu/0/cpuid): tdx.protected left out"
        )
    else:
        protected = False
    if protected:
        elems["tdx.protected"] = "true"
    if sev_parameter_enabled(host, "sev"):
        elems["sev.enabled"] = "true"
        asids = cgroup_misc_capacity(host, "sev")
        if asids > -1:
            elems["sev.asids"] = str(asids)
    if sev_parameter_enabled(host, "sev_es"):
        elems["sev.es.enabled"] = "true"
        ids = cgroup_misc_capacity(host, "sev_es")
        if ids > -1:
            elems["sev.encrypted_state_ids"] = str(ids)
    if sev_parameter_enabled(host, "sev_snp"):
        elems["sev.snp.enabled"] = "true"
    return elems


class CpuSecurityProbe(Probe):
    name = "cpu_security"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    features = (
        FeatureInfo(
            "cpu.security",
            frozenset({"attribute"}),
            attributes=(
                AttributeInfo("sgx.enabled", "bool", f"{CPUINFO} sgx + {NODES}/node*/x86/sgx_total_bytes"),
                AttributeInfo("sgx.epc", "int", f"{NODES}/node*/x86/sgx_total_bytes", description="bytes"),
                AttributeInfo("tdx.enabled", "bool", KVM_INTEL_TDX),
                AttributeInfo("tdx.total_keys", "int", _MISC + " tdx"),
                AttributeInfo("tdx.protected", "bool", f"CPUID 0x21 (real root), {CPUINFO} tdx_guest"),
                AttributeInfo("sev.enabled", "bool", KVM_AMD + "/sev"),
                AttributeInfo("sev.es.enabled", "bool", KVM_AMD + "/sev_es"),
                AttributeInfo("sev.snp.enabled", "bool", KVM_AMD + "/sev_snp"),
                AttributeInfo("sev.asids", "int", _MISC + " sev"),
                AttributeInfo("sev.encrypted_state_ids", "int", _MISC + " sev_es"),
                AttributeInfo("se.enabled", "bool", PROT_VIRT_HOST, description="s390x"),
            ),
            source=f"{KVM_AMD}, {KVM_INTEL_TDX}, {MISC_CAPACITY[0]}, {CPUINFO}",
            description="each key present only when true (NFD)",
            absent="empty (always published; keys only when true; empty off x86 and s390x)",
        ),
    )

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        info = read_cpuinfo(host)
        arch, _ = host_arch(host, info)
        if arch == "amd64":
            elems = x86_security(host, info, cpuid_reader(host), out.notes)
        elif arch == "s390x":
            elems = {"se.enabled": "true"} if host.read_text(PROT_VIRT_HOST) == "1\n" else {}
        elif arch is None:
            out.notes.append(
                "host architecture unknown (no cpuinfo, kernel release suffix or x86/s390x sysfs): "
                "cpu.security left out"
            )
            return out
        else:
            elems = {}
        out.features.add_attributes("cpu.security", elems)
        return out
