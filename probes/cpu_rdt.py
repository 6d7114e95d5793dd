"""cpu_rdt probe: NFD's cpu.rdt (Intel RDT / AMD PQoS capabilities), from /proc/cpuinfo and resctrl.

NFD (source/cpu/rdt_linux_amd64.go) reads CPUID leaves 0x7, 0xF and 0x10; the kernel decodes the
same bits into cpuinfo flags (arch/x86/kernel/cpu/scattered.c, cpuid words 9, 11, 12):
  RDTMON  = leaf 7 EBX[12] (`cqm`) and leaf 0xF EDX[1] (`cqm_llc`);
  RDTCMT  = RDTMON and leaf 0xF.1 EDX[0] (`cqm_occup_llc`);
  RDTMBM  = RDTMON and leaf 0xF.1 EDX[1] and EDX[2] (`cqm_mbm_total`, `cqm_mbm_local`);
  RDTL3CA = leaf 7 EBX[15] (`rdt_a`) and leaf 0x10 EBX[1] (`cat_l3`);
  RDTL2CA = `rdt_a` and leaf 0x10 EBX[2] (`cat_l2`);
  RDTMBA  = `rdt_a` and leaf 0x10 EBX[3] (`mba` on Intel). On AMD the kernel also sets `mba` from
  leaf 0x80000008 EBX[6], a bit NFD does not read, so an AMD `mba` flag does not establish RDTMBA:
  on the real root leaf 0x10 is read through /dev/cpu/0/cpuid; elsewhere RDTMBA is left out and the
  status says so (no `mba` flag establishes its absence on both vendors).
RDTL3CA_NUM_CLOSID = resctrl info/L3/num_closids - 1. NFD finds the resctrl mount with runc's
intelrdt.Root() (mountinfo); under a host root we read the conventional mount point
/sys/fs/resctrl, and leave the attribute out when it is not mounted there, as NFD does.
Always published on x86 (possibly empty); published empty elsewhere (rdt_stub.go).
"""

from __future__ import annotations

import contextlib

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.hostcpu import CPUINFO, CpuidFn, CpuInfo, cpuid_reader, host_arch, read_cpuinfo

RESCTRL_L3_CLOSIDS = "/sys/fs/resctrl/info/L3/num_closids"


def rdt(host: HostRoot, info: CpuInfo, cpuid: CpuidFn | None, notes: list[str]) -> dict[str, str]:
    fl = info.flags
    out: dict[str, str] = {}
    if "cqm" in fl and "cqm_llc" in fl:
        out["RDTMON"] = "true"
        if "cqm_occup_llc" in fl:
            out["RDTCMT"] = "true"
        if "cqm_mbm_total" in fl and "cqm_mbm_local" in fl:
            out["RDTMBM"] = "true"
    if "rdt_a" in fl:
        if "cat_l3" in fl:
            out["RDTL3CA"] = "true"
            raw = host.read_text(RESCTRL_L3_CLOSIDS)
            with contextlib.suppress(ValueError):
                out["RDTL3CA_NUM_CLOSID"] = str(int((raw or "").strip()) - 1)
        if "cat_l2" in fl:
            out["RDTL2CA"] = "true"
        if "mba" in fl:
            if info.vendor_id == "GenuineIntel":
                out["RDTMBA"] = "true"
            elif cpuid is not None:
                try:
                    if cpuid(0, 0)[0] >= 0x10 and cpuid(0x10, 0)[1] & (1 << 3):
                        out["RDTMBA"] = "true"
                except OSError as exc:
                    notes.append(f"CPUID device read failed ({exc}): RDTMBA left out")
            else:
                notes.append(
                    "cpuinfo `mba` on a non-Intel CPU may come from leaf 0x80000008, not the leaf 0x10 bit NFD "
                    "reads (real root with /dev/cpu/0/cpuid tells): cpu.rdt RDTMBA left out"
                )
    return out


class CpuRdtProbe(Probe):
    name = "cpu_rdt"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    features = (
        FeatureInfo(
            "cpu.rdt",
            frozenset({"attribute"}),
            attributes=(
                AttributeInfo("RDTMON", "bool", f"{CPUINFO} cqm, cqm_llc"),
                AttributeInfo("RDTCMT", "bool", f"{CPUINFO} cqm_occup_llc"),
                AttributeInfo("RDTMBM", "bool", f"{CPUINFO} cqm_mbm_total, cqm_mbm_local"),
                AttributeInfo("RDTL3CA", "bool", f"{CPUINFO} rdt_a, cat_l3"),
                AttributeInfo("RDTL3CA_NUM_CLOSID", "int", RESCTRL_L3_CLOSIDS, description="num_closids - 1"),
                AttributeInfo("RDTL2CA", "bool", f"{CPUINFO} rdt_a, cat_l2", description="NFD docs: RDTl2CA"),
                AttributeInfo("RDTMBA", "bool", f"{CPUINFO} rdt_a, mba (Intel); CPUID 0x10 (AMD, real root)"),
            ),
            source=CPUINFO,
            description="each key present only when true (NFD)",
            absent="empty (always published; empty off x86)",
        ),
    )

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        info = read_cpuinfo(host)
        arch, _ = host_arch(host, info)
        if arch is not None and arch != "amd64":
            out.features.add_attributes("cpu.rdt", {})
            return out
        if info is None or arch is None:
            out.notes.append(f"{CPUINFO} unreadable: RDT flags unknown, cpu.rdt left out")
            return out
        out.features.add_attributes("cpu.rdt", rdt(host, info, cpuid_reader(host), out.notes))
        return out
