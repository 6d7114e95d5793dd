"""cpu probe: fixture trees (exact), this machine's /proc/cpuinfo, name mapping and levels."""

from __future__ import annotations

import os

import pytest
from support_hosts import REAL, attrs, copy_fixture, fixture_host, flags, make_unreadable, run

from nodecompat.probes.cpu import CpuProbe, hypervisor_name, parse_cpuinfo
from nodecompat.probes.cpuid_names import (
    LINUX_TO_KLAUSPOST,
    nfd_arm64_cpuid,
    nfd_x86_cpuid,
    x64_level,
    x86_flags,
)

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
    assert out.notes == []


def test_mi300_exact():
    wire, _ = run(CpuProbe(), fixture_host("amd-mi300"))
    assert flags(wire, "cpu.cpuid") == GENOA
    assert attrs(wire, "cpu.model") == {"vendor_id": "AMD", "family": "25", "id": "17", "hypervisor": "none"}
    assert attrs(wire, "cpu.topology") == {"hardware_multithreading": "true", "socket_count": "2"}


def test_plain_vm_exact():
    wire, out = run(CpuProbe(), fixture_host("plain-vm"))
    assert flags(wire, "cpu.cpuid") == VM
    assert attrs(wire, "cpu.model") == {"vendor_id": "AMD", "family": "25", "id": "1", "hypervisor": "kvm"}
    assert attrs(wire, "cpu.topology") == {"hardware_multithreading": "false", "socket_count": "1"}
    assert out.notes == ["hypervisor vendor not identifiable from files; assuming kvm"]


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
    assert (model["hypervisor"] == "none") == ("hypervisor" not in linux)
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
    assert attrs(wire, "cpu.topology") == {"socket_count": "2"}  # NFD omits multithreading on a read error
    assert out.notes == ["/proc/cpuinfo unreadable: cpu.cpuid and cpu.model unknown"]


def test_hypervisor_sources():
    hv = frozenset({"hypervisor"})
    assert hypervisor_name(frozenset(), "xen", None) == ("none", False)
    assert hypervisor_name(hv, "xen\n", None) == ("xenhvm", False)
    assert hypervisor_name(hv, None, "Microsoft Corporation") == ("msvm", False)
    assert hypervisor_name(hv, None, "VMware, Inc.") == ("vmware", False)
    assert hypervisor_name(hv, None, "Some Cloud") == ("kvm", True)


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
        "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0xc0\nCPU part\t: 0xac3\n"
    )
    wire, _ = run(CpuProbe(), HostRoot(tmp_path))
    assert flags(wire, "cpu.cpuid") == {"FP", "ASIMD"}
    assert attrs(wire, "cpu.model") == {"vendor_id": "Ampere"}
    assert attrs(wire, "cpu.topology") is None


@pytest.mark.parametrize(
    "junk", ["", "\n\n\n", "flags: avx\n", "processor: 0\nvendor_id\n::::\n", "\x00\xff"]
)
def test_parse_cpuinfo_tolerates_junk(junk):
    info = parse_cpuinfo(junk)
    assert info.processors <= 1
