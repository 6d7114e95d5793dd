"""cpu_security, cpu_power, cpu_rdt probes: NFD's derivations on small host trees (NFD file cited per test)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support_hosts import REAL, attrs, run

from nodecompat.hostroot import HostRoot
from nodecompat.probes.cpu_power import CpuPowerProbe
from nodecompat.probes.cpu_rdt import CpuRdtProbe
from nodecompat.probes.cpu_security import CpuSecurityProbe, misc_capacity
from nodecompat.probes.hostcpu import cpuid_reader

INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t: 143\nflags\t: fpu lm {}\n"
AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t: 17\nflags\t: fpu lm {}\n"
ARM = (
    "processor\t: 0\nFeatures\t: fp asimd cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
    "CPU variant\t: 0x1\nCPU part\t: 0xd40\nCPU revision\t: 1\n"
)


def tree(root: Path, files: dict[str, str]) -> HostRoot:
    for rel, text in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return HostRoot(root)


# -- cpu.security: source/cpu/security_amd64.go ------------------------------------------------------
def test_sev_snp_with_misc_capacity(tmp_path):
    host = tree(
        tmp_path,
        {
            "/proc/cpuinfo": AMD.format("sev sev_es"),
            "/sys/module/kvm_amd/parameters/sev": "Y\n",
            "/sys/module/kvm_amd/parameters/sev_es": "1\n",
            "/sys/module/kvm_amd/parameters/sev_snp": "N\n",
            "/sys/fs/cgroup/misc.capacity": "sev 509\nsev_es 99\n",
        },
    )
    wire, out = run(CpuSecurityProbe(), host)
    assert attrs(wire, "cpu.security") == {
        "sev.enabled": "true",
        "sev.asids": "509",
        "sev.es.enabled": "true",
        "sev.encrypted_state_ids": "99",
    }
    assert out.notes == []


def test_misc_capacity_prefix_rule():
    """retrieveCgroupMiscCapacityValue(): HasPrefix, so `sev` also matches a `sev_es` line that comes first."""
    assert misc_capacity("sev_es 10\nsev 20\n", "sev") == 10
    assert misc_capacity("tdx 63\n", "tdx") == 63
    assert misc_capacity("tdx x\n", "tdx") == -1
    assert misc_capacity("", "sev") == -1


def test_tdx_host_and_guest(tmp_path):
    host = tree(
        tmp_path,
        {
            "/proc/cpuinfo": INTEL.format("hypervisor tdx_guest"),
            "/sys/module/kvm_intel/parameters/tdx": "Y\n",
            "/sys/fs/cgroup/misc/misc.capacity": "tdx 31\n",
        },
    )
    wire, _ = run(CpuSecurityProbe(), host)
    assert attrs(wire, "cpu.security") == {"tdx.enabled": "true", "tdx.total_keys": "31", "tdx.protected": "true"}


def test_tdx_parameter_must_be_exactly_Y_newline(tmp_path):
    """tdxEnabled() compares the whole file with "Y\\n"."""
    host = tree(tmp_path, {"/proc/cpuinfo": INTEL.format(""), "/sys/module/kvm_intel/parameters/tdx": "1\n"})
    assert attrs(run(CpuSecurityProbe(), host)[0], "cpu.security") == {}


def test_sgx_from_flag_and_epc_bytes(tmp_path):
    host = tree(
        tmp_path,
        {
            "/proc/cpuinfo": INTEL.format("sgx sgx_lc"),
            "/sys/devices/system/node/node0/x86/sgx_total_bytes": "34359738368\n",
            "/sys/devices/system/node/node1/x86/sgx_total_bytes": "34359738368\n",
        },
    )
    wire, _ = run(CpuSecurityProbe(), host)
    assert attrs(wire, "cpu.security") == {"sgx.enabled": "true", "sgx.epc": str(2 * 34359738368)}


def test_sgx_flag_without_epc_files_is_unknown(tmp_path):
    host = tree(tmp_path, {"/proc/cpuinfo": INTEL.format("sgx")})
    wire, out = run(CpuSecurityProbe(), host)
    assert attrs(wire, "cpu.security") == {}
    assert "sgx.enabled and sgx.epc left out" in out.notes[0]


def test_hyperv_intel_guest_tdx_protected_unknown(tmp_path):
    host = tree(
        tmp_path,
        {"/proc/cpuinfo": INTEL.format("hypervisor"), "/sys/bus/vmbus/devices/x/class_id": "{}\n"},
    )
    wire, out = run(CpuSecurityProbe(), host)
    assert attrs(wire, "cpu.security") == {}
    assert any("tdx.protected left out" in n for n in out.notes)


def test_arm64_security_is_empty_and_published(tmp_path):
    """security_stub.go: nil -> NewAttributeFeatures(nil): published, empty."""
    host = tree(tmp_path, {"/proc/cpuinfo": ARM, "/sys/module/kvm_amd/parameters/sev": "Y\n"})
    assert attrs(run(CpuSecurityProbe(), host)[0], "cpu.security") == {}


def test_s390x_secure_execution(tmp_path):
    """security_s390x.go seEnabled(): prot_virt_host is exactly "1\\n"."""
    host = tree(
        tmp_path,
        {
            "/proc/cpuinfo": "vendor_id       : IBM/S390\n# processors    : 2\n",
            "/sys/firmware/uv/prot_virt_host": "1\n",
        },
    )
    assert attrs(run(CpuSecurityProbe(), host)[0], "cpu.security") == {"se.enabled": "true"}


def test_architecture_from_kernel_release_when_cpuinfo_is_missing(tmp_path):
    host = tree(
        tmp_path,
        {
            "/proc/sys/kernel/osrelease": "5.14.0-427.13.1.el9_4.x86_64\n",
            "/sys/module/kvm_amd/parameters/sev_snp": "Y\n",
        },
    )
    wire, out = run(CpuSecurityProbe(), host)
    assert attrs(wire, "cpu.security") == {"sev.snp.enabled": "true"}
    assert any("sgx" in n for n in out.notes) and any("tdx.protected" in n for n in out.notes)


def test_unknown_architecture_leaves_security_out(tmp_path):
    wire, out = run(CpuSecurityProbe(), HostRoot(tmp_path))
    assert attrs(wire, "cpu.security") is None and "architecture unknown" in out.notes[0]


# -- cpu.pstate / cpu.cstate / cpu.sst: pstate_amd64.go, cstate_amd64.go, power_amd64.go ---------------
PSTATE = {
    "/proc/cpuinfo": INTEL.format(""),
    "/sys/devices/system/cpu/intel_pstate/status": "active\n",
    "/sys/devices/system/cpu/intel_pstate/no_turbo": "0\n",
    "/sys/devices/system/cpu/cpufreq/policy0/affected_cpus": "0\n",
    "/sys/devices/system/cpu/cpufreq/policy0/scaling_governor": "performance\n",
    "/sys/devices/system/cpu/cpufreq/policy1/affected_cpus": "1\n",
    "/sys/devices/system/cpu/cpufreq/policy1/scaling_governor": "performance\n",
    "/sys/devices/system/cpu/cpufreq/policy2/affected_cpus": "\n",
    "/sys/devices/system/cpu/cpufreq/policy2/scaling_governor": "powersave\n",
    "/sys/devices/system/cpu/cpuidle/current_driver": "intel_idle\n",
    "/sys/module/intel_idle/parameters/max_cstate": "9\n",
}


def test_pstate_active_turbo_and_governor(tmp_path):
    """A policy with no CPUs is skipped; the code key is scaling_governor (docs: scaling)."""
    wire, out = run(CpuPowerProbe(), tree(tmp_path, PSTATE))
    assert attrs(wire, "cpu.pstate") == {"status": "active", "turbo": "true", "scaling_governor": "performance"}
    assert attrs(wire, "cpu.cstate") == {"enabled": "true"}
    assert attrs(wire, "cpu.sst") == {}
    assert out.notes == []


def test_pstate_governors_disagree_and_passive(tmp_path):
    files = {**PSTATE, "/sys/devices/system/cpu/cpufreq/policy1/scaling_governor": "powersave\n"}
    assert attrs(run(CpuPowerProbe(), tree(tmp_path, files))[0], "cpu.pstate") == {"status": "active", "turbo": "true"}
    files["/sys/devices/system/cpu/intel_pstate/status"] = "passive\n"
    files["/sys/devices/system/cpu/intel_pstate/no_turbo"] = "1\n"
    assert attrs(run(CpuPowerProbe(), tree(tmp_path, files))[0], "cpu.pstate") == {
        "status": "passive",
        "turbo": "false",
    }
    files["/sys/devices/system/cpu/intel_pstate/status"] = "off\n"
    assert attrs(run(CpuPowerProbe(), tree(tmp_path, files))[0], "cpu.pstate") == {}


def test_cstate_other_driver_empty_and_unreadable_absent(tmp_path):
    files = {**PSTATE, "/sys/devices/system/cpu/cpuidle/current_driver": "acpi_idle\n"}
    assert attrs(run(CpuPowerProbe(), tree(tmp_path, files))[0], "cpu.cstate") == {}
    files = {**PSTATE, "/sys/module/intel_idle/parameters/max_cstate": "x\n"}
    wire, out = run(CpuPowerProbe(), tree(tmp_path / "b", files))
    assert attrs(wire, "cpu.cstate") is None and any("cpu.cstate left out" in n for n in out.notes)


def test_sst_needs_cpuid_when_base_frequency_exists(tmp_path):
    files = {
        "/proc/cpuinfo": INTEL.format(""),
        "/sys/devices/system/cpu/cpu0/cpufreq/base_frequency": "2700000\n",
    }
    host = tree(tmp_path, files)
    (tmp_path / "sys/bus/cpu/devices").mkdir(parents=True)
    (tmp_path / "sys/bus/cpu/devices/cpu0").symlink_to("../../../devices/system/cpu/cpu0")
    wire, out = run(CpuPowerProbe(), host)
    assert attrs(wire, "cpu.sst") is None
    assert any("CPUID leaf 0x16" in n for n in out.notes)


def test_power_features_empty_off_x86(tmp_path):
    """pstate_stub.go, cstate_stub.go, power_stub.go: nil maps, still published."""
    wire, out = run(CpuPowerProbe(), tree(tmp_path, {"/proc/cpuinfo": ARM}))
    assert [attrs(wire, n) for n in ("cpu.pstate", "cpu.cstate", "cpu.sst")] == [{}, {}, {}]
    assert out.notes == []


# -- cpu.rdt: rdt_linux_amd64.go ------------------------------------------------------------------------
def test_rdt_intel_from_cpuinfo_flags_and_resctrl(tmp_path):
    flags_ = "cqm rdt_a cat_l3 cat_l2 cdp_l3 mba cqm_llc cqm_occup_llc cqm_mbm_total cqm_mbm_local"
    host = tree(tmp_path, {"/proc/cpuinfo": INTEL.format(flags_), "/sys/fs/resctrl/info/L3/num_closids": "16\n"})
    assert attrs(run(CpuRdtProbe(), host)[0], "cpu.rdt") == {
        "RDTMON": "true",
        "RDTCMT": "true",
        "RDTMBM": "true",
        "RDTL3CA": "true",
        "RDTL3CA_NUM_CLOSID": "15",
        "RDTL2CA": "true",
        "RDTMBA": "true",
    }


def test_rdt_amd_mba_flag_is_not_evidence(tmp_path):
    host = tree(tmp_path, {"/proc/cpuinfo": AMD.format("rdt_a cat_l3 mba cqm cqm_llc cqm_occup_llc")})
    wire, out = run(CpuRdtProbe(), host)
    assert attrs(wire, "cpu.rdt") == {"RDTMON": "true", "RDTCMT": "true", "RDTL3CA": "true"}
    assert any("RDTMBA left out" in n for n in out.notes)


def test_rdt_without_monitoring_flags_is_empty(tmp_path):
    host = tree(tmp_path, {"/proc/cpuinfo": INTEL.format("cqm_llc cat_l3")})  # no cqm, no rdt_a
    assert attrs(run(CpuRdtProbe(), host)[0], "cpu.rdt") == {}


# -- the real machine ----------------------------------------------------------------------------------------
def test_real_host_cpuid_rdt_matches_cpuinfo_flags():
    """On this machine (when /dev/cpu/0/cpuid is readable), NFD's CPUID-leaf derivation of RDTMON/RDTL3CA
    gives what the cpuinfo flags give."""
    cpuid = cpuid_reader(REAL)
    if cpuid is None:
        pytest.skip("/dev/cpu/0/cpuid not readable here")
    ebx7 = cpuid(7, 0)[1] if cpuid(0, 0)[0] >= 7 else 0
    mon = bool(ebx7 & (1 << 12)) and bool(cpuid(0xF, 0)[3] & (1 << 1))
    l3ca = bool(ebx7 & (1 << 15)) and bool(cpuid(0x10, 0)[1] & (1 << 1))
    got = attrs(run(CpuRdtProbe(), REAL)[0], "cpu.rdt") or {}
    assert ("RDTMON" in got, "RDTL3CA" in got) == (mon, l3ca)


# -- other architectures: cpu.go getS390xAttributes/getHypervisorFromProcSysinfo, coprocessor_ppc64le.go --------
S390X_CPUINFO = (
    "vendor_id       : IBM/S390\n# processors    : 2\nbogomips per cpu: 3241.00\n\n"
    "processor 0: version = FF,  identification = 0F4D27,  machine = 3931\n\n"
    "cpu number      : 0\nversion         : FF\nidentification  : 0F4D27\nmachine         : 3931\n"
)


def test_s390x_model_and_hypervisor(tmp_path):
    from nodecompat.probes.cpu import CpuProbe

    host = tree(
        tmp_path, {"/proc/cpuinfo": S390X_CPUINFO, "/proc/sysinfo": "LPAR Name: X\nControl Program: z/VM    7.3.0\n"}
    )
    model = attrs(run(CpuProbe(), host)[0], "cpu.model")
    assert model == {"vendor_id": "IBM_S390", "family": "0F4D27", "id": "3931", "hypervisor": "z_VM_7.3.0"}


def test_ppc64le_nx_gzip_and_stub_model(tmp_path):
    from nodecompat.probes.cpu import CpuProbe

    host = tree(
        tmp_path,
        {
            "/proc/cpuinfo": "processor\t: 0\ncpu\t\t: POWER9 (architected), altivec supported\nrevision\t: 2.2\n",
            "/sys/devices/vio/ibm,compression-v1/nx_gzip_caps": "x\n",
        },
    )
    wire, _ = run(CpuProbe(), host)
    assert attrs(wire, "cpu.coprocessor") == {"nx_gzip": "true"}
    # klauspost/cpuid detects nothing on ppc64le: VendorUnknown / 0 / 0, and VM() is false -> "none"
    assert attrs(wire, "cpu.model") == {"vendor_id": "VendorUnknown", "family": "0", "id": "0", "hypervisor": "none"}
