"""What the cpu probes share: the host's architecture, /proc/cpuinfo, and CPUID on the real host.

NFD's cpu source is compiled per architecture (GOARCH): security_amd64.go, pstate_amd64.go,
cstate_amd64.go, rdt_linux_amd64.go, power_amd64.go hold the x86 code, and *_stub.go files make the
same features empty elsewhere (coprocessor_ppc64le.go, security_s390x.go are the other way round).
A host root may hold another machine's tree, so the architecture comes from the tree itself: the
shape of its /proc/cpuinfo (x86 `vendor_id`, arm64 `CPU implementer` with `CPU architecture: 8`,
ppc64le `cpu : POWERn`, s390x `vendor_id : IBM/S390`).

CPUID: NFD executes it (klauspost/cpuid, NFD's pkg/cpuid). Python cannot execute an instruction
without writing machine code into executable memory, so we read the kernel's CPUID device
/dev/cpu/<n>/cpuid instead (x86 `cpuid` driver, CONFIG_X86_CPUID; a pread at offset
`subleaf << 32 | leaf` returns EAX, EBX, ECX, EDX of that CPU). That is only the probed host's
CPUID when the host root is `/` (a tree's /dev is not this CPU), so `cpuid_reader()` returns None
for any other root, when the device is missing (module not loaded, not root) or not a character
device; the probes then use host files or leave the value out and say so.
"""

from __future__ import annotations

import os
import platform
import re
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nodecompat.hostroot import HostRoot
from nodecompat.probes.bounded_read import text_of
from nodecompat.probes.memo_derived import derived
from nodecompat.probes.probe_memo import RecordingHost, noted

SLASH = Path("/")  # made once: a Path is built and compared part by part
CPUINFO = "/proc/cpuinfo"
OSRELEASE = "/proc/sys/kernel/osrelease"
CPUID_DEVICE = "/dev/cpu/0/cpuid"
MAX_CPUID_LEAVES = 256  # CPUID results kept per process (the probes ask for about ten)

Regs = tuple[int, int, int, int]
CpuidFn = Callable[[int, int], Regs]


@dataclass
class CpuInfo:
    """What the probes need from /proc/cpuinfo (first processor block; flags are equal on every CPU)."""

    vendor_id: str = ""
    family: str | None = None
    model: str | None = None
    model_name: str = ""
    flags: frozenset[str] = frozenset()
    arm_features: frozenset[str] = frozenset()
    arm_implementer: int | None = None
    arm_architecture: str | None = None
    arm_variant: int | None = None
    arm_part: int | None = None
    arm_revision: int | None = None
    power_cpu: str = ""
    physical_ids: set[str] = field(default_factory=set)
    processors: int = 0
    s390x: dict[str, str] | None = None  # NFD's s390x model attributes (cpuinfo_facts), else None


def _int0(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


def _blocks(text: str) -> Iterator[str]:
    """text.split("\n\n"), one block at a time (a caller that stops early splits no further)."""
    start = 0
    while True:
        end = text.find("\n\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start:end]
        start = end + 2


def parse_cpuinfo(text: str, *, first_only: bool = False) -> CpuInfo:
    """Parse /proc/cpuinfo (x86, arm64, ppc64le, s390x). Junk lines are skipped; missing keys stay empty.

    s390x prints one header block (vendor_id) and `processor N:` lines; that block counts as the first.
    first_only: stop after the first processor's block (every field but `processors` and `physical_ids`
    is the same; a 192-CPU cpuinfo, ~5,000 lines, is not read past its first ~27).
    """
    info = CpuInfo()
    first = True
    for block in _blocks(text):
        kv: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                kv.setdefault(key.strip(), value.strip())
        if "processor" not in kv and "vendor_id" not in kv:
            continue
        if "processor" in kv:
            info.processors += 1
        if "physical id" in kv:
            info.physical_ids.add(kv["physical id"])
        if not first:
            continue
        first = False
        info.vendor_id = kv.get("vendor_id", "")
        info.family = kv.get("cpu family")
        info.model = kv.get("model")
        info.model_name = kv.get("model name", "")
        info.flags = frozenset(kv.get("flags", "").split())
        info.arm_features = frozenset(kv.get("Features", "").split())
        info.arm_implementer = _int0(kv.get("CPU implementer"))
        info.arm_architecture = kv.get("CPU architecture")
        info.arm_variant = _int0(kv.get("CPU variant"))
        info.arm_part = _int0(kv.get("CPU part"))
        info.arm_revision = _int0(kv.get("CPU revision"))
        info.power_cpu = kv.get("cpu", "")
        if first_only:
            break
    return info


def cpuinfo_arch(info: CpuInfo | None) -> str | None:
    """GOARCH-style name from the shape of /proc/cpuinfo: amd64, arm64, arm, ppc64le, s390x, or None."""
    if info is None:
        return None
    if info.vendor_id.startswith("IBM/S390"):
        return "s390x"
    if info.vendor_id or "lm" in info.flags:
        return "amd64"
    if info.arm_implementer is not None:
        return "arm64" if info.arm_architecture in ("8", "AArch64") else "arm"
    if info.power_cpu.startswith("POWER"):
        return "ppc64le"
    return None


_MACHINES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
             "ppc64le": "ppc64le", "s390x": "s390x"}  # fmt: skip
_RELEASE_ARCH = re.compile(r"[.-](x86_64|amd64|aarch64|arm64|ppc64le|s390x)(?:[.+-]|$)")
_ARCH_ONLY = (("/sys/module/kvm_amd", "amd64"), ("/sys/module/kvm_intel", "amd64"), ("/sys/firmware/uv", "s390x"))


def host_arch(host: HostRoot, info: CpuInfo | None) -> tuple[str | None, str]:
    """(GOARCH the host's NFD would run as, where that came from), or (None, "") when nothing tells.

    Evidence in order: the shape of /proc/cpuinfo; this machine (host root `/`); an architecture
    suffix of the kernel release (5.14.0-427.el9.x86_64, 6.1.0-18-arm64, ...); a sysfs directory
    only one architecture has (kvm_amd/kvm_intel modules: x86; /sys/firmware/uv: s390x).
    """
    arch = cpuinfo_arch(info)
    if arch:
        return arch, CPUINFO
    if host.root == SLASH:
        machine = _MACHINES.get(platform.machine())
        if machine:
            return machine, "this machine"
    release = host.read_line(OSRELEASE) or ""
    m = _RELEASE_ARCH.search(release)
    if m:
        return _MACHINES[m.group(1)], OSRELEASE
    for path, a in _ARCH_ONLY:
        if host.exists(path):
            return a, path
    return None, ""


def read_cpuinfo(host: HostRoot) -> CpuInfo | None:
    """What the cpu probes use of /proc/cpuinfo (cpuinfo_facts), None when unreadable. Parsed once per
    round (shared by the round's probes: not to be changed); on a probe's recording host only these facts
    are logged (probe_memo.derived), so a replay compares them, not the bytes: cpu MHz and bogomips,
    which change between reads on a host with frequency scaling, do not make the cpu probes run again."""
    return derived(host, CPUINFO, cpuinfo_facts)


def cpuinfo_facts(raw: bytes | None) -> CpuInfo | None:
    """The first processor's facts of /proc/cpuinfo `raw` (parse_cpuinfo(first_only=True): flags, vendor,
    family, model, MIDR fields; only that block is parsed, so a 512-CPU cpuinfo costs no more than a
    2-CPU one) and, on s390x, NFD's model attributes (s390x_model over every line). None when unreadable.
    Everything the cpu probes take from /proc/cpuinfo is in this value: they do not read the file
    otherwise (tests/test_probe_memo_volatile.py changes each line and compares with a fresh round)."""
    text = text_of(raw)
    if text is None:
        return None
    info = parse_cpuinfo(text, first_only=True)
    if cpuinfo_arch(info) in ("s390x", None):  # s390x, or the architecture comes from elsewhere (host_arch)
        info.s390x = s390x_model(text)  # NFD getS390xAttributes() reads every line
    return info


_FORBIDDEN = re.compile(r"[^-A-Za-z0-9_.]+")


def s390x_model(text: str) -> dict[str, str]:
    """NFD getS390xAttributes() + getCPUModel() override rules over /proc/cpuinfo (source/cpu/cpu.go)."""
    vendor, family, ident = "", "0", "0"
    for line in text.split("\n"):
        key, sep, val = line.partition(":")
        if not sep:
            continue
        key, val = key.strip(), val.strip()
        if key == "vendor_id":
            vendor = _FORBIDDEN.sub("_", val)
        elif key == "machine":
            ident = val
        elif key == "identification" and family == "0":
            family = val
    out = {"vendor_id": vendor or "VendorUnknown", "family": "0", "id": "0"}
    if family not in ("", "0"):
        out["family"] = family
    if ident not in ("", "0"):
        out["id"] = ident
    return out


# CPUID registers of this machine, read once per process: NFD's klauspost/cpuid detects them once,
# in its package init() (cpuid.CPU, which source/cpu/cpuid_amd64.go, cpu.go and security_amd64.go read
# on every discovery). Each read of /dev/cpu/0/cpuid runs CPUID on CPU 0 through an interprocessor
# call (a VM exit on a guest): ~10-200 us, more than the rest of a cpu probe. Bounded by
# MAX_CPUID_LEAVES. `_cpuid_ok` says whether the device was found usable (a failed check is
# retried on the next call: a module loaded later is seen).
_cpuid_lock = threading.Lock()
_cpuid_regs: dict[tuple[int, int], Regs] = {}
_cpuid_ok: list[bool] = []


def _read_regs(fd: int, leaf: int, subleaf: int) -> Regs | None:
    raw = os.pread(fd, 16, (subleaf << 32) | leaf)
    return _unpack(raw) if len(raw) == 16 else None


def _cpuid_device_usable() -> bool:
    """Whether /dev/cpu/0/cpuid is a readable character device giving leaves 0 and 1 (checked once per
    process when it is; again on each call while it is not)."""
    if _cpuid_ok:
        return True
    try:
        fd = os.open(CPUID_DEVICE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            return False
        first: dict[tuple[int, int], Regs] = {}
        for leaf in (0, 1):  # read what every caller needs while the fd is open
            regs = _read_regs(fd, leaf, 0)
            if regs is None:
                return False
            first[(leaf, 0)] = regs
    except OSError:
        return False
    finally:
        os.close(fd)
    with _cpuid_lock:
        _cpuid_regs.update(first)
        _cpuid_ok[:] = [True]
    return True


def _cpuid(leaf: int, subleaf: int = 0) -> Regs:
    key = (leaf, subleaf)
    hit = _cpuid_regs.get(key)
    if hit is not None:
        return hit
    fd = os.open(CPUID_DEVICE, os.O_RDONLY | os.O_CLOEXEC)
    try:
        regs = _read_regs(fd, leaf, subleaf)
    finally:
        os.close(fd)
    if regs is None:
        raise OSError(f"short read from {CPUID_DEVICE} for leaf {leaf:#x}")
    with _cpuid_lock:
        if len(_cpuid_regs) < MAX_CPUID_LEAVES:
            _cpuid_regs[key] = regs
    return regs


def cpuid_reader(host: HostRoot) -> CpuidFn | None:
    """A function (leaf, subleaf) -> (eax, ebx, ecx, edx) executing CPUID on this machine, or None.

    Only for the real root `/`, and only when /dev/cpu/0/cpuid is a readable character device.
    The returned function raises OSError if a read fails. Registers are read once per process (as
    klauspost/cpuid's init() does for NFD) and then served from memory. On a probe's recording host
    (probes/probe_memo.py) the device's state and each register read are logged as inputs.
    """
    if host.root != SLASH or not noted(host, _cpuid_device_usable):
        return None
    if isinstance(host, RecordingHost):  # registers are inputs too: a replay asks for them again
        recording = host

        def logged(leaf: int, subleaf: int = 0) -> Regs:
            return noted(recording, _cpuid, leaf, subleaf)

        return logged
    return _cpuid


def _unpack(raw: bytes) -> Regs:
    return (
        int.from_bytes(raw[0:4], "little"),
        int.from_bytes(raw[4:8], "little"),
        int.from_bytes(raw[8:12], "little"),
        int.from_bytes(raw[12:16], "little"),
    )


def regs_string(*values: int) -> str:
    """klauspost/cpuid valAsString: register bytes little-endian, cut at the first NUL."""
    out = bytearray()
    for v in values:
        for shift in (0, 8, 16, 24):
            b = (v >> shift) & 0xFF
            if b == 0:
                return out.decode("latin-1")
            out.append(b)
    return out.decode("latin-1")
