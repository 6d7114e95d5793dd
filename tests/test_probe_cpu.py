"""cpu probe: fixture trees (exact), this machine's /proc/cpuinfo, name mapping and levels."""

from __future__ import annotations

import os

import pytest
from support_hosts import REAL, attrs, copy_fixture, fixture_host, flags, make_unreadable, run

from nodecompat.hostroot import HostRoot
from nodecompat.probes.cpu import CpuProbe, arm64_model, midr_from_cpuinfo, parse_cpuinfo
from nodecompat.probes.cpuid_names import (
    LINUX_TO_KLAUSPOST,
    nfd_arm64_cpuid,
    nfd_x86_cpuid,
    x64_level,
    x86_flags,
)
from nodecompat.probes.hostcpu import cpuid_reader
from nodecompat.probes.hypervisor import from_signature, hypervisor

SPR = {
    "X87",
    "SYSEE",
    "CMPXCHG8",
    "CMOV",
    "MMX",
    "FXSR",
    "SSE",
    "SSE2",
    "HTT",
    "SYSCALL",
    "NX",
    "RDTSCP",
    "SSE3",
    "CLMUL",
    "VMX",
    "SSSE3",
    "FMA3",
    "CX16",
    "SSE4",
    "SSE42",
    "MOVBE",
    "POPCNT",
    "AESNI",
    "XSAVE",
    "AVX",
    "F16C",
    "RDRAND",
    "LAHF",
    "LZCNT",
    "PPIN",
    "IBRS",
    "IBPB",
    "STIBP",
    "BMI1",
    "AVX2",
    "BMI2",
    "ERMS",
    "AVX512F",
    "AVX512DQ",
    "RDSEED",
    "ADX",
    "AVX512IFMA",
    "AVX512CD",
    "SHA",
    "AVX512BW",
    "AVX512VL",
    "XSAVEOPT",
    "XSAVEC",
    "XGETBV1",
    "XSAVES",
    "AVXVNNI",
    "AVX512BF16",
    "WBNOINVD",
    "AVX512VBMI",
    "WAITPKG",
    "AVX512VBMI2",
    "GFNI",
    "VAES",
    "VPCLMULQDQ",
    "AVX512VNNI",
    "AVX512BITALG",
    "TME",
    "AVX512VPOPCNTDQ",
    "CLDEMOTE",
    "MOVDIRI",
    "MOVDIR64B",
    "ENQCMD",
    "FSRM",
    "MD_CLEAR",
    "SERIALIZE",
    "TSXLDTRK",
    "PCONFIG",
    "CETIBT",
    "AMXBF16",
    "AVX512FP16",
    "AMXTILE",
    "AMXINT8",
    "FLUSH_L1D",
    "IA32_ARCH_CAP",
    "OSXSAVE",
    "MMXEXT",
    "X86_64_V1",
    "X86_64_V2",
    "X86_64_V3",
    "X86_64_V4",
}

GENOA = {
    "X87",
    "SYSEE",
    "CMPXCHG8",
    "CMOV",
    "MMX",
    "FXSR",
    "SSE",
    "SSE2",
    "HTT",
    "SYSCALL",
    "NX",
    "MMXEXT",
    "FXSROPT",
    "RDTSCP",
    "SSE3",
    "CLMUL",
    "SSSE3",
    "FMA3",
    "CX16",
    "SSE4",
    "SSE42",
    "MOVBE",
    "POPCNT",
    "AESNI",
    "XSAVE",
    "AVX",
    "F16C",
    "RDRAND",
    "LAHF",
    "SVM",
    "LZCNT",
    "SSE4A",
    "IBS",
    "TOPEXT",
    "CPBOOST",
    "IBRS",
    "IBPB",
    "STIBP",
    "BMI1",
    "AVX2",
    "BMI2",
    "ERMS",
    "AVX512F",
    "AVX512DQ",
    "RDSEED",
    "ADX",
    "AVX512IFMA",
    "AVX512CD",
    "SHA",
    "AVX512BW",
    "AVX512VL",
    "XSAVEOPT",
    "XSAVEC",
    "XGETBV1",
    "XSAVES",
    "AVX512BF16",
    "CLZERO",
    "RDPRU",
    "WBNOINVD",
    "PPIN",
    "CPPC",
    "SVMNP",
    "LBRVIRT",
    "NRIPS",
    "TSCRATEMSR",
    "VMCBCLEAN",
    "SVMFBASID",
    "SVMDA",
    "SVMPF",
    "SVMPFT",
    "AVX512VBMI",
    "AVX512VBMI2",
    "GFNI",
    "VAES",
    "VPCLMULQDQ",
    "AVX512VNNI",
    "AVX512BITALG",
    "AVX512VPOPCNTDQ",
    "MCAOVERFLOW",
    "SUCCOR",
    "FSRM",
    "FLUSH_L1D",
    "OSXSAVE",
    "X86_64_V1",
    "X86_64_V2",
    "X86_64_V3",
    "X86_64_V4",
}

VM = {
    "X87",
    "SYSEE",
    "CMPXCHG8",
    "CMOV",
    "MMX",
    "FXSR",
    "SSE",
    "SSE2",
    "HTT",
    "SYSCALL",
    "NX",
    "MMXEXT",
    "FXSROPT",
    "RDTSCP",
    "SSE3",
    "CLMUL",
    "SSSE3",
    "FMA3",
    "CX16",
    "SSE4",
    "SSE42",
    "MOVBE",
    "POPCNT",
    "AESNI",
    "XSAVE",
    "AVX",
    "F16C",
    "RDRAND",
    "HYPERVISOR",
    "LAHF",
    "LZCNT",
    "SSE4A",
    "TOPEXT",
    "BMI1",
    "AVX2",
    "BMI2",
    "ERMS",
    "RDSEED",
    "ADX",
    "SHA",
    "XSAVEOPT",
    "XSAVEC",
    "XGETBV1",
    "XSAVES",
    "CLZERO",
    "VAES",
    "VPCLMULQDQ",
    "FSRM",
    "OSXSAVE",
    "X86_64_V1",
    "X86_64_V2",
    "X86_64_V3",
}


def test_h100_exact():
    wire, out = run(CpuProbe(), fixture_host("h100-server"))
    assert flags(wire, "cpu.cpuid") == SPR
    assert attrs(wire, "cpu.model") == {
        "vendor_id": "Intel",
        "family": "6",
        "id": "143",
        "hypervisor": "none",
    }
    assert attrs(wire, "cpu.topology") == {"hardware_multithreading": "false", "socket_count": "2"}
    assert attrs(wire, "cpu.coprocessor") == {}  # coprocessor_stub.go off ppc64le: published, empty
    assert out.notes == [
        "cpu.cpuid attribute AVX10_VERSION needs CPUID leaf 0x24 (real root with /dev/cpu/0/cpuid): left out"
    ]


def test_mi300_exact():
    wire, _ = run(CpuProbe(), fixture_host("amd-mi300"))
    assert flags(wire, "cpu.cpuid") == GENOA
    assert attrs(wire, "cpu.model") == {"vendor_id": "AMD", "family": "25", "id": "17", "hypervisor": "none"}
    assert attrs(wire, "cpu.topology") == {"hardware_multithreading": "true", "socket_count": "2"}


def test_plain_vm_exact():
    wire, _out = run(CpuProbe(), fixture_host("plain-vm"))
    assert flags(wire, "cpu.cpuid") == VM
    # hypervisor: the kvm-clock clocksource (offered only after the KVMKVMKVM CPUID signature is found)
    assert attrs(wire, "cpu.model") == {"vendor_id": "AMD", "family": "25", "id": "1", "hypervisor": "kvm"}
    assert attrs(wire, "cpu.topology") == {"hardware_multithreading": "false", "socket_count": "1"}


def test_real_host_matches_cpuinfo():
    with open("/proc/cpuinfo") as f:
        text = f.read()
    linux: set[str] = set()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k.strip() == "flags" and not linux:
            linux = set(v.split())
        fields.setdefault(k.strip(), v.strip())
    wire, _ = run(CpuProbe(), REAL)
    got = flags(wire, "cpu.cpuid") or set()
    expected_plain = {LINUX_TO_KLAUSPOST[f] for f in linux if f in LINUX_TO_KLAUSPOST}
    assert expected_plain <= got
    assert ("AVX2" in got) == ("avx2" in linux) and ("AVX512F" in got) == ("avx512f" in linux)
    assert ("X86_64_V3" in got) == ({"avx2", "bmi2", "fma", "movbe", "xsave", "abm"} <= linux)
    model = attrs(wire, "cpu.model") or {}
    assert model["family"] == fields["cpu family"] and model["id"] == fields["model"]
    assert (model.get("hypervisor") == "none") == ("hypervisor" not in linux)
    pkgs = set()
    for cpu in os.listdir("/sys/bus/cpu/devices"):
        with open(f"/sys/bus/cpu/devices/{cpu}/topology/physical_package_id") as f:
            pkgs.add(f.read().strip())
    assert (attrs(wire, "cpu.topology") or {})["socket_count"] == str(len(pkgs))


def test_unreadable_cpuinfo_and_topology(tmp_path):
    host = copy_fixture("h100-server", tmp_path)
    make_unreadable(host, "/proc/cpuinfo")
    make_unreadable(host, "/sys/devices/system/cpu/cpu1/topology/thread_siblings_list")
    wire, out = run(CpuProbe(), host)
    assert flags(wire, "cpu.cpuid") is None and attrs(wire, "cpu.model") is None
    assert attrs(wire, "cpu.topology") == {}  # NFD discoverTopology(): {} on any read error, still published
    assert out.notes == ["/proc/cpuinfo unreadable: cpu.cpuid and cpu.model unknown"]


HV_CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t: 143\nflags\t: fpu lm hypervisor\n"


@pytest.mark.parametrize(
    ("files", "want"),
    [
        ({"sys/hypervisor/type": "xen\n"}, "xenhvm"),
        ({"sys/devices/system/clocksource/clocksource0/available_clocksource": "tsc kvm-clock \n"}, "kvm"),
        ({"sys/bus/vmbus/devices/f8b3781a-1e82-4818-a1c3-63d806ec15bb/class_id": "x\n"}, "msvm"),
        ({"sys/devices/virtual/dmi/id/sys_vendor": "VMware, Inc.\n"}, "vmware"),
        ({"sys/devices/virtual/dmi/id/sys_vendor": "BHYVE\n"}, "bhyve"),
        (
            {
                "sys/devices/virtual/dmi/id/sys_vendor": "Microsoft Corporation\n",
                "sys/devices/virtual/dmi/id/product_name": "Virtual Machine\n",
            },
            "msvm",
        ),
        # QEMU's DMI names no CPUID signature (KVM or TCG): not evidence on its own.
        ({"sys/devices/virtual/dmi/id/sys_vendor": "QEMU\n"}, None),
        ({}, None),
        # KVM with Hyper-V enlightenments: leaf 0x40000000 could be either -> left out.
        (
            {"sys/devices/system/clocksource/clocksource0/available_clocksource": "kvm-clock hyperv_clocksource_msr\n"},
            None,
        ),
    ],
)
def test_hypervisor_from_host_file_evidence(tmp_path, files, want):
    """NFD cpu.go getHypervisor() + klauspost vendorMapping, established from files (hypervisor.py)."""
    for rel, text in {"proc/cpuinfo": HV_CPUINFO, **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    wire, out = run(CpuProbe(), HostRoot(tmp_path))
    assert (attrs(wire, "cpu.model") or {}).get("hypervisor") == want
    if want is None:
        assert any("cpu.model.hypervisor left out" in n for n in out.notes)


def test_bare_metal_is_none_without_evidence(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(HV_CPUINFO.replace(" hypervisor", ""))
    wire, _ = run(CpuProbe(), HostRoot(tmp_path))
    assert (attrs(wire, "cpu.model") or {})["hypervisor"] == "none"


def test_signature_names():
    """klauspost/cpuid cpuid.go vendorMapping, lower-cased (NFD getHypervisorFromCPUID)."""
    assert from_signature("KVMKVMKVM") == "kvm"
    assert from_signature("Microsoft Hv") == "msvm"
    assert from_signature("VMwareVMware") == "vmware"
    assert from_signature("XenVMMXenVMM") == "xenhvm"
    assert from_signature("TCGTCGTCGTCG") == "qemu"
    assert from_signature("Odd Vendor!") == "Odd_Vendor_"
    assert from_signature("") == "unknown"


def test_real_host_model_equals_klauspost_from_cpuid():
    """On this machine, with /dev/cpu/0/cpuid: family/id from cpuinfo equal klauspost familyModel() over
    CPUID leaf 1, and the hypervisor equals the leaf 0x40000000 signature NFD reads."""
    cpuid = cpuid_reader(REAL)
    if cpuid is None:
        pytest.skip("/dev/cpu/0/cpuid not readable here (cpuid module or root missing)")
    eax = cpuid(1, 0)[0]
    family = (eax >> 8) & 0xF
    ext = family == 6
    if family == 0xF:
        family += (eax >> 20) & 0xFF
        ext = True
    model = (eax >> 4) & 0xF
    if ext:
        model += (eax >> 12) & 0xF0
    wire, _ = run(CpuProbe(), REAL)
    got = attrs(wire, "cpu.model") or {}
    assert (got["family"], got["id"]) == (str(family), str(model))
    with open("/proc/cpuinfo") as f:
        info = parse_cpuinfo(f.read())
    assert hypervisor(REAL, "amd64", info, cpuid)[0] == got["hypervisor"]


def test_levels():
    v1 = {"cmov", "cx8", "fpu", "fxsr", "mmx", "sse", "sse2", "syscall"}
    v2 = v1 | {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}
    v3 = v2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
    v4 = v3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
    assert [x64_level(x86_flags(s)) for s in (v1, v2, v3, v4)] == [1, 2, 3, 4]
    assert x64_level(x86_flags(v3 - {"xsave"})) == 2  # no XSAVE -> no OSXSAVE -> not v3
    assert x64_level(x86_flags(v4 - {"syscall"})) == 0  # neither SYSCALL nor SYSENTER
    assert x64_level(x86_flags(v4 - {"syscall"} | {"sep"})) == 4
    assert {"X86_64_V1", "X86_64_V2"} <= nfd_x86_cpuid(v2) and "X86_64_V3" not in nfd_x86_cpuid(v2)


def test_mapping_examples_from_the_brief():
    got = x86_flags(
        {
            "avx2",
            "sse4_1",
            "sse4_2",
            "pclmulqdq",
            "aes",
            "sha_ni",
            "fma",
            "hypervisor",
            "avx512f",
            "vmx",
            "svm",
            "not_a_flag",
        }
    )
    assert got == {
        "AVX2",
        "SSE4",
        "SSE42",
        "CLMUL",
        "AESNI",
        "SHA",
        "FMA3",
        "HYPERVISOR",
        "AVX512F",
        "VMX",
        "SVM",
    }


def test_arm64_cpuinfo():
    text = (
        "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
        "sve sve2 i8mm bf16 smei16i64 unknownfeat\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
        "CPU variant\t: 0x0\nCPU part\t: 0xd4f\n\nprocessor\t: 1\nFeatures\t: fp\nCPU implementer\t: 0x41\n"
    )
    info = parse_cpuinfo(text)
    assert info.processors == 2 and info.arm_implementer == 0x41
    assert nfd_arm64_cpuid(info.arm_features) == {
        "FP",
        "ASIMD",
        "EVTSTRM",
        "AES",
        "PMULL",
        "SHA1",
        "SHA2",
        "CRC32",
        "ATOMICS",
        "SVE",
        "SVE2",
        "I8MM",
        "BF16",
        "SMEI16I64",
    }


def test_arm64_host(tmp_path):
    from nodecompat.hostroot import HostRoot

    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(
        "processor\t: 0\nFeatures\t: fp asimd cpuid\nCPU implementer\t: 0xc0\nCPU architecture: 8\n"
        "CPU variant\t: 0x3\nCPU part\t: 0xac3\nCPU revision\t: 0\n"
    )
    wire, _ = run(CpuProbe(), HostRoot(tmp_path))
    assert flags(wire, "cpu.cpuid") == {"FP", "ASIMD", "CPUID"}
    # klauspost detect_arm64.go: MIDR 0xC03FAC30 -> Ampere, family 0x3F, id 0xAC30; hypervisor none (NFD)
    assert attrs(wire, "cpu.model") == {"vendor_id": "Ampere", "family": "63", "id": "44080", "hypervisor": "none"}
    assert attrs(wire, "cpu.topology") == {}  # no /sys/bus/cpu/devices: NFD publishes it empty


def test_arm64_midr_register_file_wins(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(
        "processor\t: 0\nFeatures\t: fp cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
        "CPU variant\t: 0x0\nCPU part\t: 0xd4f\nCPU revision\t: 0\n"
    )
    reg = tmp_path / "sys/devices/system/cpu/cpu0/regs/identification/midr_el1"
    reg.parent.mkdir(parents=True)
    reg.write_text("0x00000000410fd4f1\n")
    wire, _ = run(CpuProbe(), HostRoot(tmp_path))
    assert attrs(wire, "cpu.model") == {"vendor_id": "ARM", "family": "15", "id": "54513", "hypervisor": "none"}


def test_arm64_without_hwcap_cpuid_is_what_klauspost_reports():
    """klauspost addInfo(): MIDR is not read unless HWCAP_CPUID is set -> VendorUnknown, 0, 0."""
    info = parse_cpuinfo(
        "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
        "CPU variant\t: 0x1\nCPU part\t: 0xd40\nCPU revision\t: 1\n"
    )
    assert midr_from_cpuinfo(info) == 0x411FD401
    assert arm64_model(info, midr_from_cpuinfo(info)) == {"vendor_id": "VendorUnknown", "family": "0", "id": "0"}


@pytest.mark.parametrize("junk", ["", "\n\n\n", "flags: avx\n", "processor: 0\nvendor_id\n::::\n", "\x00\xff"])
def test_parse_cpuinfo_tolerates_junk(junk):
    info = parse_cpuinfo(junk)
    assert info.processors <= 1


def test_the_kept_cpuid_translation_is_the_translation():
    """cached_nfd_cpuid (the cpu probe's: kept for the last 8 flag sets) answers nfd_x86_cpuid /
    nfd_arm64_cpuid's set, frozen (shared between rounds), for each fixture's cpuinfo; a changed flag set
    is translated anew."""
    from support_hosts import FIXTURES

    from nodecompat.probes.cpuid_names import cached_nfd_cpuid

    seen = 0
    for info_path in sorted(FIXTURES.glob("*/proc/cpuinfo")):
        info = parse_cpuinfo(info_path.read_text(), first_only=True)
        if info.flags:
            got = cached_nfd_cpuid(frozenset(info.flags), False)
            assert got == nfd_x86_cpuid(info.flags) and isinstance(got, frozenset)
            fewer = frozenset(info.flags - {"avx2"})
            assert cached_nfd_cpuid(fewer, False) == nfd_x86_cpuid(fewer)
            seen += 1
        elif info.arm_features:
            got = cached_nfd_cpuid(frozenset(info.arm_features), True)
            assert got == nfd_arm64_cpuid(info.arm_features) and isinstance(got, frozenset)
            seen += 1
    assert seen >= 5


def test_a_huge_flags_line_is_not_kept_after_the_round(tmp_path):
    """The kept cpuid translations are bounded in bytes, not only in count: a host root whose cpuinfo
    flags line holds 100,000 extra words (~4 MB of text, ~13 MB as a frozenset) gives the same cpu.cpuid
    and, once its rounds are over, leaves no more than before it (was: each such set kept by
    cached_nfd_cpuid's lru_cache: 25.8 MB after these two, up to 8 sets of up to the 32 MiB read bound)."""
    import gc
    import tracemalloc

    plain = run(CpuProbe(), fixture_host("h100-server"))[0]["flags"]["cpu.cpuid"]
    hosts = []
    for seed in range(2):
        host = copy_fixture("h100-server", tmp_path / str(seed))
        info = host.root / "proc" / "cpuinfo"
        extra = " ".join(f"{tmp_path.name}{seed}_{i}" for i in range(100_000))  # new words each run
        info.write_text(info.read_text().replace("flags\t: ", f"flags\t: {extra} ", 1))
        hosts.append(host)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for host in hosts:
            assert run(CpuProbe(), host)[0]["flags"]["cpu.cpuid"] == plain
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 2_000_000, f"{kept:,} bytes kept after two rounds"
