"""cpu_power probe: NFD's cpu.pstate, cpu.cstate and cpu.sst, from sysfs under the host root.

Exactly NFD's x86 code (source/cpu/pstate_amd64.go, cstate_amd64.go, power_amd64.go); on other
architectures NFD's stubs make all three published and empty.
- cpu.pstate (always published, possibly empty): intel_pstate `status` (nothing when the driver is
  absent or `off`), `turbo` (no_turbo's first byte is '0'), and in `active` mode
  `scaling_governor` when every cpufreq policy with CPUs reads the same governor. NFD's docs call
  it `scaling`; its code publishes `scaling_governor`, and so do we.
- cpu.cstate: `enabled` = intel_idle's max_cstate > 0, only with the intel_idle cpuidle driver;
  published empty when cpuidle is absent or another driver is in use; absent (NFD logs an error)
  when /sys/devices/system/cpu, cpuidle/current_driver or max_cstate cannot be read.
- cpu.sst: `bf.enabled` = true when some CPU's cpufreq/base_frequency / 1000 exceeds the nominal
  base frequency of CPUID leaf 0x16. No CPU with base_frequency -> published empty (NFD's answer
  does not need CPUID then). Otherwise CPUID leaf 0x16 is read on the real root through
  /dev/cpu/0/cpuid; no file holds it (the brand string's "@ x.xxGHz" is marketing text, not that
  register), so on any other root cpu.sst is left out and the status says so.
"""

from __future__ import annotations

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.hostcpu import CPUINFO, CpuidFn, cpuid_reader, host_arch, read_cpuinfo
from nodecompat.probes.textkept import TextKept

SYS_CPU = "/sys/devices/system/cpu"
PSTATE = SYS_CPU + "/intel_pstate"
CPUFREQ = SYS_CPU + "/cpufreq"
CPUIDLE = SYS_CPU + "/cpuidle"
MAX_CSTATE = "/sys/module/intel_idle/parameters/max_cstate"
CPU_DEVICES = "/sys/bus/cpu/devices"


def pstate(host: HostRoot) -> dict[str, str]:
    """NFD detectPstate() (errors give nil, which NFD still publishes as an empty feature)."""
    if not host.is_dir(SYS_CPU) or not host.exists(PSTATE):
        return {}
    status = host.read_text(f"{PSTATE}/status")
    if status is None or status.strip() == "off":
        return {}
    status = status.strip()
    out = {"status": status}
    no_turbo = host.read_bytes(f"{PSTATE}/no_turbo")
    if no_turbo:
        out["turbo"] = "true" if no_turbo[:1] == b"0" else "false"
    if status != "active":
        return out
    scaling = ""
    for _policy, path in host.iterdir(CPUFREQ):
        cpus = host.read_text(f"{path}/affected_cpus")
        if cpus is None or not cpus.strip():
            continue
        gov = host.read_text(f"{path}/scaling_governor")
        if gov is None:
            continue
        gov = gov.strip()
        if scaling and scaling != gov:
            scaling = ""
            break
        scaling = gov
    if scaling:
        out["scaling_governor"] = scaling
    return out


def cstate(host: HostRoot) -> tuple[dict[str, str] | None, str]:
    """NFD detectCstate(): (attributes, "") or (None, why) when NFD would log an error and publish nothing."""
    if not host.is_dir(SYS_CPU):
        return None, f"{SYS_CPU} missing"
    if not host.exists(CPUIDLE):
        return {}, ""
    driver = host.read_text(f"{CPUIDLE}/current_driver")
    if driver is None:
        return None, f"{CPUIDLE}/current_driver unreadable"
    if driver.strip() != "intel_idle":
        return {}, ""
    raw = host.read_text(MAX_CSTATE)
    if raw is None:
        return None, f"{MAX_CSTATE} unreadable"
    try:
        return {"enabled": str(int(raw.strip()) > 0).lower()}, ""
    except ValueError:
        return None, f"{MAX_CSTATE} is not an integer"


# (CPU_DEVICES, names...) -> each CPU's base_frequency path, once per distinct listing
_SST_PLANS: TextKept[tuple[str, ...]] = TextKept(8, 64 << 10)


def sst(host: HostRoot, cpuid: CpuidFn | None) -> tuple[dict[str, str] | None, str]:
    """NFD discoverSST()/discoverSSTBF(): (attributes, "") or (None, why it cannot be established)."""
    if not host.is_dir(CPU_DEVICES):
        return {}, ""  # ReadDir fails: NFD logs it and publishes the empty map
    freqs: list[int] = []
    cpus = host.listdir(CPU_DEVICES)
    for p in _SST_PLANS.get((CPU_DEVICES, *cpus), lambda: tuple(f"{CPU_DEVICES}/{c}/cpufreq/base_frequency"
                                                                for c in cpus)):
        if not host.exists(p):
            continue
        text = host.read_text(p)
        try:
            freqs.append(int((text or "").strip()))
        except ValueError:
            return {}, ""  # NFD: error -> bf not set
    if not freqs:
        return {}, ""
    if cpuid is None:
        return None, (
            "cpufreq/base_frequency present: whether SST-BF is on needs the nominal base frequency of CPUID leaf "
            "0x16, readable only on the real root with /dev/cpu/0/cpuid: cpu.sst left out"
        )
    try:
        nominal = cpuid(0x16, 0)[0] if cpuid(0, 0)[0] >= 0x16 else 0
    except OSError as exc:
        return None, f"CPUID device read failed ({exc}): cpu.sst left out"
    if nominal == 0:
        return {}, ""  # NFD: error "nominal base frequency info is missing" -> bf not set
    return ({"bf.enabled": "true"} if any(f // 1000 > nominal for f in freqs) else {}), ""


class CpuPowerProbe(Probe):
    name = "cpu_power"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    features = (
        FeatureInfo(
            "cpu.pstate",
            frozenset({"attribute"}),
            attributes=(
                AttributeInfo("status", "string", PSTATE + "/status", description="active or passive"),
                AttributeInfo("turbo", "bool", PSTATE + "/no_turbo"),
                AttributeInfo(
                    "scaling_governor",
                    "string",
                    CPUFREQ + "/policy*/scaling_governor",
                    description="active mode only, when all policies agree (NFD docs: `scaling`)",
                ),
            ),
            source=PSTATE,
            absent="empty (always published)",
        ),
        FeatureInfo(
            "cpu.cstate",
            frozenset({"attribute"}),
            attributes=(AttributeInfo("enabled", "bool", MAX_CSTATE, description="intel_idle max_cstate > 0"),),
            source=f"{CPUIDLE}/current_driver, {MAX_CSTATE}",
            absent="empty without cpuidle or intel_idle; absent when a file NFD needs is unreadable",
        ),
        FeatureInfo(
            "cpu.sst",
            frozenset({"attribute"}),
            attributes=(
                AttributeInfo(
                    "bf.enabled", "bool", CPU_DEVICES + "/cpu*/cpufreq/base_frequency + CPUID 0x16 (real root)"
                ),
            ),
            source=CPU_DEVICES + "/cpu*/cpufreq/base_frequency",
            absent="empty without base_frequency files; absent when CPUID 0x16 is needed and unreadable",
        ),
    )

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        f = out.features
        arch, _ = host_arch(host, read_cpuinfo(host))
        if arch is None:
            out.notes.append(f"host architecture unknown ({CPUINFO} unreadable ...): cpu.pstate/cstate/sst left out")
            return out
        if arch != "amd64":  # pstate_stub.go, cstate_stub.go, power_stub.go
            for name in ("cpu.pstate", "cpu.cstate", "cpu.sst"):
                f.add_attributes(name, {})
            return out
        f.add_attributes("cpu.pstate", pstate(host))
        cs, why = cstate(host)
        if cs is None:
            out.notes.append(f"{why}: cpu.cstate left out, as NFD does")
        else:
            f.add_attributes("cpu.cstate", cs)
        bf, why = sst(host, cpuid_reader(host))
        if bf is None:
            out.notes.append(why)
        else:
            f.add_attributes("cpu.sst", bf)
        return out
