"""CPU flag names as NFD reports them, derived from /proc/cpuinfo.

NFD runs the CPUID instruction through the Go library klauspost/cpuid and reports its
`FeatureSet()` names (AVX2, SSE4, SSE42, CLMUL, AESNI ...). Python has no CPUID instruction, and
the kernel has already decoded CPUID (and masked what the OS cannot use, e.g. AVX without XSAVE
enabled) into the cpuinfo `flags` line, so we translate those Linux names to klauspost's. The table
is hand-written from klauspost/cpuid's FeatureID list and the kernel's cpufeatures.h names; Linux
flags with no klauspost equivalent are dropped, and klauspost IDs that Linux does not print
(FP128, MOVSB_ZL, ...) cannot be reported. Two klauspost IDs have no cpuinfo flag of their own
and are inferred (see `DERIVED`). The x86-64 micro-architecture levels follow klauspost's
`X64Level()` and NFD's X86_64_V1..Vn flags.

arm64: NFD reads AT_HWCAP/AT_HWCAP2 and names the bits (FP, ASIMD, SVE2, SMEI16I64 ...); the
cpuinfo `Features` line prints the same bits under the same names in lower case, so the mapping is
upper-casing within NFD's known set.
"""

from __future__ import annotations

import threading

# Linux /proc/cpuinfo flag -> klauspost/cpuid FeatureID name (x86).
LINUX_TO_KLAUSPOST: dict[str, str] = {
    "3dnow": "AMD3DNOW",
    "3dnowext": "AMD3DNOWEXT",
    "abm": "LZCNT",  # CPUID 8000_0001 ECX[5] (ABM/LZCNT); Linux names it abm on Intel and AMD
    "adx": "ADX",
    "aes": "AESNI",
    "amx_bf16": "AMXBF16",
    "amx_complex": "AMXCOMPLEX",
    "amx_fp16": "AMXFP16",
    "amx_int8": "AMXINT8",
    "amx_tile": "AMXTILE",
    "arch_capabilities": "IA32_ARCH_CAP",
    "avx": "AVX",
    "avx2": "AVX2",
    "avx512_bf16": "AVX512BF16",
    "avx512_bitalg": "AVX512BITALG",
    "avx512_fp16": "AVX512FP16",
    "avx512_vbmi2": "AVX512VBMI2",
    "avx512_vnni": "AVX512VNNI",
    "avx512_vp2intersect": "AVX512VP2INTERSECT",
    "avx512_vpopcntdq": "AVX512VPOPCNTDQ",
    "avx512bw": "AVX512BW",
    "avx512cd": "AVX512CD",
    "avx512dq": "AVX512DQ",
    "avx512er": "AVX512ER",
    "avx512f": "AVX512F",
    "avx512ifma": "AVX512IFMA",
    "avx512pf": "AVX512PF",
    "avx512vbmi": "AVX512VBMI",
    "avx512vl": "AVX512VL",
    "avx_ifma": "AVXIFMA",
    "avx_ne_convert": "AVXNECONVERT",
    "avx_vnni": "AVXVNNI",
    "avx_vnni_int16": "AVXVNNIINT16",
    "avx_vnni_int8": "AVXVNNIINT8",
    "bhi_ctrl": "BHI_CTRL",
    "bmi1": "BMI1",
    "bmi2": "BMI2",
    "cldemote": "CLDEMOTE",
    "clzero": "CLZERO",
    "cmov": "CMOV",
    "cmpccxadd": "CMPCCXADD",
    "cpb": "CPBOOST",
    "cppc": "CPPC",
    "cx16": "CX16",
    "cx8": "CMPXCHG8",
    "decodeassists": "SVMDA",
    "enqcmd": "ENQCMD",
    "erms": "ERMS",
    "f16c": "F16C",
    "flush_l1d": "FLUSH_L1D",
    "flushbyasid": "SVMFBASID",
    "fma": "FMA3",
    "fma4": "FMA4",
    "fpu": "X87",
    "fred": "FRED",
    "fsrm": "FSRM",
    "fxsr": "FXSR",
    "fxsr_opt": "FXSROPT",
    "gfni": "GFNI",
    "hle": "HLE",
    "hreset": "HRESET",
    "ht": "HTT",
    "hybrid_cpu": "HYBRID_CPU",
    "hypervisor": "HYPERVISOR",
    "ibpb": "IBPB",
    "ibrs": "IBRS",
    "ibs": "IBS",
    "ibt": "CETIBT",
    "invlpgb": "INVLPGB",
    "lahf_lm": "LAHF",
    "lam": "LAM",
    "lbrv": "LBRVIRT",
    "mcommit": "MCOMMIT",
    "md_clear": "MD_CLEAR",
    "mmx": "MMX",
    "mmxext": "MMXEXT",
    "movbe": "MOVBE",
    "movdir64b": "MOVDIR64B",
    "movdiri": "MOVDIRI",
    "mpx": "MPX",
    "npt": "SVMNP",
    "nrip_save": "NRIPS",
    "nx": "NX",
    "overflow_recov": "MCAOVERFLOW",
    "pausefilter": "SVMPF",
    "pclmulqdq": "CLMUL",
    "pconfig": "PCONFIG",
    "pfthreshold": "SVMPFT",
    "pni": "SSE3",
    "popcnt": "POPCNT",
    "intel_ppin": "PPIN",
    "amd_ppin": "PPIN",
    "rdpru": "RDPRU",
    "rdrand": "RDRAND",
    "rdseed": "RDSEED",
    "rdtscp": "RDTSCP",
    "rtm": "RTM",
    "rtm_always_abort": "RTM_ALWAYS_ABORT",
    "sep": "SYSEE",
    "serialize": "SERIALIZE",
    "sev": "SEV",
    "sev_es": "SEV_ES",
    "sev_snp": "SEV_SNP",
    "sgx": "SGX",
    "sgx_lc": "SGXLC",
    "sha_ni": "SHA",
    "shstk": "CETSS",
    "user_shstk": "CETSS",
    "sme": "SME",
    "srbds_ctrl": "SRBDS_CTRL",
    "sse": "SSE",
    "sse2": "SSE2",
    "sse4_1": "SSE4",
    "sse4_2": "SSE42",
    "sse4a": "SSE4A",
    "ssse3": "SSSE3",
    "stibp": "STIBP",
    "succor": "SUCCOR",
    "svm": "SVM",
    "syscall": "SYSCALL",
    "tbm": "TBM",
    "tdx_guest": "TDX_GUEST",
    "tme": "TME",
    "topoext": "TOPEXT",
    "tsc_scale": "TSCRATEMSR",
    "tsxldtrk": "TSXLDTRK",
    "vaes": "VAES",
    "vmcb_clean": "VMCBCLEAN",
    "vmx": "VMX",
    "vpclmulqdq": "VPCLMULQDQ",
    "waitpkg": "WAITPKG",
    "wbnoinvd": "WBNOINVD",
    "wrmsrns": "WRMSRNS",
    "xgetbv1": "XGETBV1",
    "xop": "XOP",
    "xsave": "XSAVE",
    "xsavec": "XSAVEC",
    "xsaveopt": "XSAVEOPT",
    "xsaves": "XSAVES",
}

# klauspost IDs inferred from other flags, because Linux does not print them:
# - OSXSAVE: the OS enabled XSAVE. Linux always does when it lists `xsave` (it removes the flag
#   when booted with noxsave), so xsave implies OSXSAVE.
# - MMXEXT: klauspost sets it for every CPU with SSE (SSE includes the MMX integer extensions).
DERIVED: dict[str, tuple[str, ...]] = {
    "OSXSAVE": ("XSAVE",),
    "MMXEXT": ("SSE",),
}

_ONE_OF_LEVEL = ("SYSEE", "SYSCALL")
_LEVEL1 = ("CMOV", "CMPXCHG8", "X87", "FXSR", "MMX", "SSE", "SSE2")
_LEVEL2 = (*_LEVEL1, "CX16", "LAHF", "POPCNT", "SSE3", "SSE4", "SSE42", "SSSE3")
_LEVEL3 = (*_LEVEL2, "AVX", "AVX2", "BMI1", "BMI2", "F16C", "FMA3", "LZCNT", "MOVBE", "OSXSAVE")
_LEVEL4 = (*_LEVEL3, "AVX512F", "AVX512BW", "AVX512CD", "AVX512DQ", "AVX512VL")

# arm64 HWCAP/HWCAP2 names NFD reports (source/cpu/cpuid_linux_arm64.go), as cpuinfo prints them.
ARM64_NAMES = frozenset(
    {
        "fp",
        "asimd",
        "evtstrm",
        "aes",
        "pmull",
        "sha1",
        "sha2",
        "crc32",
        "atomics",
        "fphp",
        "asimdhp",
        "cpuid",
        "asimdrdm",
        "jscvt",
        "fcma",
        "lrcpc",
        "dcpop",
        "sha3",
        "sm3",
        "sm4",
        "asimddp",
        "sha512",
        "sve",
        "asimdfhm",
        "dit",
        "uscat",
        "ilrcpc",
        "flagm",
        "ssbs",
        "sb",
        "paca",
        "pacg",
        "dcpodp",
        "sve2",
        "sveaes",
        "svepmull",
        "svebitperm",
        "svesha3",
        "svesm4",
        "flagm2",
        "frint",
        "svei8mm",
        "svef32mm",
        "svef64mm",
        "svebf16",
        "i8mm",
        "bf16",
        "dgh",
        "rng",
        "bti",
        "mte",
        "ecv",
        "afp",
        "rpres",
        "mte3",
        "sme",
        "smei16i64",
        "smef64f64",
        "smei8i32",
        "smef16f32",
        "smeb16f32",
        "smef32f32",
        "smefa64",
        "wfxt",
        "ebf16",
        "sveebf16",
    }
)


def x86_flags(linux_flags: set[str] | frozenset[str]) -> set[str]:
    """klauspost/cpuid names for a set of Linux x86 cpuinfo flags (without the X86_64_V levels)."""
    out = {LINUX_TO_KLAUSPOST[f] for f in linux_flags if f in LINUX_TO_KLAUSPOST}
    for name, needs in DERIVED.items():
        if all(n in out for n in needs):
            out.add(name)
    return out


def x64_level(names: set[str]) -> int:
    """klauspost's X64Level(): the x86-64 micro-architecture level (0 when not x86-64)."""
    if not any(n in names for n in _ONE_OF_LEVEL):
        return 0
    for level, need in ((4, _LEVEL4), (3, _LEVEL3), (2, _LEVEL2), (1, _LEVEL1)):
        if all(n in names for n in need):
            return level
    return 0


def nfd_x86_cpuid(linux_flags: set[str] | frozenset[str]) -> set[str]:
    """NFD's cpu.cpuid flag set on x86: klauspost names plus X86_64_V1..V<level>."""
    names = x86_flags(linux_flags)
    level = x64_level(names)
    return names | {f"X86_64_V{i}" for i in range(1, level + 1)}


# What cached_nfd_cpuid keeps: the last 8 flag sets translated, each of at most MAX_KEPT_FLAGS flags of
# MAX_KEPT_FLAG_CHARS characters in all (real hosts: 92-174 flags, ~1 KiB), so ~1.5 MB at most whatever a
# host root's cpuinfo says (it can hold up to the 32 MiB read bound).
MAX_KEPT = 8
MAX_KEPT_FLAGS = 1024
MAX_KEPT_FLAG_CHARS = 16 << 10
_kept: dict[tuple[frozenset[str], bool], frozenset[str]] = {}
_kept_lock = threading.Lock()


def cached_nfd_cpuid(flags: frozenset[str], arm: bool) -> frozenset[str]:
    """nfd_x86_cpuid(flags) (or nfd_arm64_cpuid when `arm`), kept for the last MAX_KEPT flag sets: a
    host's cpuinfo flags are the same every round (16-34 us of a round's cpu probe to translate again,
    92-174 flags; a kept one costs a lookup). Bounded in bytes: a set over MAX_KEPT_FLAGS flags or
    MAX_KEPT_FLAG_CHARS characters is translated and not kept (the size is counted on a miss only).
    Shared, hence frozen."""
    key = (flags, arm)
    got = _kept.get(key)
    if got is None:
        got = frozenset(nfd_arm64_cpuid(flags) if arm else nfd_x86_cpuid(flags))
        if len(flags) <= MAX_KEPT_FLAGS and sum(map(len, flags)) <= MAX_KEPT_FLAG_CHARS:
            with _kept_lock:  # the probes run in worker threads
                while len(_kept) >= MAX_KEPT:
                    del _kept[next(iter(_kept))]  # the oldest
                _kept[key] = got
    return got


def nfd_arm64_cpuid(features: set[str] | frozenset[str]) -> set[str]:
    """NFD's cpu.cpuid flag set on arm64 from the cpuinfo `Features` words."""
    return {f.upper() for f in features if f in ARM64_NAMES}
