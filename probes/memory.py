"""memory probe: NFD's memory.numa, memory.swap and memory.nv, plus memory sizes (memory.size).

NFD has no memory size at all; "needs 64 GiB" is the commonest requirement, so memory.size
(nfd False) gives total/available/swap bytes from /proc/meminfo under the root. On the real root the
values are psutil's (the maintained reading of /proc/meminfo): where MemTotal, MemAvailable and
SwapTotal are present and sane they are exactly what psutil reports, so they are taken from the
round's read; otherwise psutil itself answers, with its fallbacks for old kernels and containers.
For any other root psutil would read the wrong /proc, so only the tree's meminfo is used. Both
report the kernel's MemTotal, which on a virtio-mem VM (like this sandbox) is larger than the per-node sums.
"""

from __future__ import annotations

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.bounded_read import text_of
from nodecompat.probes.hostcpu import SLASH
from nodecompat.probes.memo_derived import derived
from nodecompat.probes.probe_memo import not_replayable

NODE_BUS = "/sys/bus/node/devices"
SWAPS = "/proc/swaps"
MEMINFO = "/proc/meminfo"
ND_DEVICES = "/sys/bus/nd/devices"


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> {key: bytes} (values given in kB are multiplied; bad lines skipped)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        if len(parts) > 1 and parts[1] == "kB":
            value *= 1024
        out[key.strip()] = value
    return out


SIZE_KEYS = ("MemTotal", "MemAvailable", "SwapTotal")  # the meminfo fields memory.size is made of


def meminfo_sizes(raw: bytes | None) -> dict[str, int] | None:
    """{key: bytes} of /proc/meminfo `raw` for SIZE_KEYS only (parse_meminfo's values; a key absent from
    the file absent here), None when unreadable. All the memory probe uses of meminfo: the rest
    (MemFree, Cached, HugePages_* ...) changes between reads without changing a published feature (NFD's
    memory.hugepages comes from sysfs, source/memory/memory.go, as probes/hugepages.py reads it), so a
    replay compares this value (probe_memo.derived), not the bytes."""
    text = text_of(raw)
    if text is None:
        return None
    # parse_meminfo over the lines that can hold one of the keys (~6 of ~55): every such line has "Total"
    # or "Avail" in it, so the values are parse_meminfo's (a repeated key: the last one, as there)
    mi = parse_meminfo("\n".join(ln for ln in text.splitlines() if "Total" in ln or "Avail" in ln))
    return {k: mi[k] for k in SIZE_KEYS if k in mi}


def swap_enabled(text: str) -> bool:
    """NFD: swap is enabled when /proc/swaps has more than one non-empty line (header + entries)."""
    return len([line for line in text.splitlines() if line.strip()]) > 1


def node_names(host: HostRoot) -> list[str] | None:
    """NUMA node entries of /sys/bus/node/devices, or None when it cannot be listed.

    Exactly NFD's detectNuma(): an empty directory is 0 nodes; a missing one fails (memory.numa
    absent). /sys/devices/system/node is not consulted, since NFD does not look there."""
    if not host.is_dir(NODE_BUS):
        return None
    return host.listdir(NODE_BUS)


class MemoryProbe(Probe):
    name = "memory"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    features = (
        FeatureInfo(
            "memory.numa",
            frozenset({"attribute"}),
            absent="absent when no NUMA node is listed",
            attributes=(
                AttributeInfo("is_numa", "bool", NODE_BUS, description="more than one node"),
                AttributeInfo("node_count", "int", NODE_BUS),
            ),
            source=NODE_BUS,
        ),
        FeatureInfo(
            "memory.swap",
            frozenset({"attribute"}),
            absent="absent when /proc/swaps is unreadable",
            attributes=(AttributeInfo("enabled", "bool", SWAPS),),
            source=SWAPS,
        ),
        FeatureInfo(
            "memory.nv",
            frozenset({"instance"}),
            absent="empty (zero instances) without /sys/bus/nd/devices",
            attributes=(
                AttributeInfo("name", "string", ND_DEVICES + "/<dev>"),
                AttributeInfo("devtype", "string", ND_DEVICES + "/<dev>/devtype"),
                AttributeInfo("mode", "string", ND_DEVICES + "/<dev>/mode"),
            ),
            source=ND_DEVICES,
            description="non-volatile memory (NVDIMM) devices",
        ),
        FeatureInfo(
            "memory.size",
            frozenset({"attribute"}),
            absent="absent when /proc/meminfo is unreadable",
            attributes=(
                AttributeInfo("total_bytes", "int", MEMINFO + " MemTotal", nfd=False),
                AttributeInfo("available_bytes", "int", MEMINFO + " MemAvailable", nfd=False, volatile=True),
                AttributeInfo("swap_total_bytes", "int", MEMINFO + " SwapTotal", nfd=False),
            ),
            nfd=False,
            source=MEMINFO,
        ),
    )

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        f = out.features
        nodes = node_names(host)
        if nodes is not None:
            f.add_attributes("memory.numa", {"is_numa": str(len(nodes) > 1).lower(), "node_count": str(len(nodes))})
        else:
            out.notes.append(f"{NODE_BUS} cannot be listed: memory.numa left out, as NFD does")

        swaps = host.read_text(SWAPS)
        if swaps is None:
            out.notes.append(f"{SWAPS} unreadable: memory.swap left out")
        else:
            f.add_attributes("memory.swap", {"enabled": str(swap_enabled(swaps)).lower()})

        nv = []
        for name, path in host.iterdir(ND_DEVICES):
            inst = {"name": name}
            for attr in ("devtype", "mode"):
                v = host.read_line(f"{path}/{attr}")
                if v is not None:  # NFD readNdDeviceInfo(): any readable value, even empty
                    inst[attr] = v
            nv.append(inst)
        f.set_instances("memory.nv", nv)

        size = self._size(host)
        if size:
            f.add_attributes("memory.size", size)
        else:
            out.notes.append(f"{MEMINFO} unreadable: memory.size left out")
        return out

    @staticmethod
    def _size(host: HostRoot) -> dict[str, str]:
        mi = derived(host, MEMINFO, meminfo_sizes) or {}  # only what memory.size publishes (probe_memo)
        if host.root == SLASH:
            total, avail, swap = mi.get("MemTotal"), mi.get("MemAvailable"), mi.get("SwapTotal")
            if total is None or swap is None or not avail or avail > total:
                not_replayable(host, "psutil")  # not the host tree: run every round
                return _psutil_size()  # psutil's estimates for old kernels and odd values
            # What psutil.virtual_memory().total/.available and swap_memory().total give here (psutil
            # _pslinux.py: MemTotal, MemAvailable when 0 < it <= MemTotal, SwapTotal; kB * 1024), read
            # through the round's host without psutil's second pass over meminfo and /proc/vmstat.
            return {"total_bytes": str(total), "available_bytes": str(avail), "swap_total_bytes": str(swap)}
        out = {}
        for attr, key in (
            ("total_bytes", "MemTotal"),
            ("available_bytes", "MemAvailable"),
            ("swap_total_bytes", "SwapTotal"),
        ):
            if key in mi:
                out[attr] = str(mi[key])
        return out


def _psutil_size() -> dict[str, str]:
    """memory.size from psutil (this machine only): its fallbacks when MemAvailable is missing (kernels
    before 3.14), zero, or above MemTotal (containers), and its sysinfo(2) fallback for swap."""
    import psutil  # only for those cases (fast start)

    vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    return {
        "total_bytes": str(vm.total),
        "available_bytes": str(vm.available),
        "swap_total_bytes": str(sw.total),
    }
