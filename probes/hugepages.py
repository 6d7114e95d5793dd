"""hugepages probe: NFD's `memory.hugepages`, plus free counts and per-NUMA-node pools.

NFD reports only `enabled` and `hugepages-<size>` (nr_hugepages, with the size written as a
Kubernetes quantity: 2048kB -> 2Mi, 1048576kB -> 1Gi). A job that needs 1 GiB pages on the NUMA
node of its GPU needs more, so we add `hugepages-<size>.total` / `.free` attributes (nfd False) and
one `memory.hugepages.node` instance per (node, size) with `node`, `size`, `total`, `free`.
"""

from __future__ import annotations

import re

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.textkept import TextKept

GLOBAL = "/sys/kernel/mm/hugepages"
NODES = "/sys/devices/system/node"
_POOL = re.compile(r"^hugepages-(\d+)kB$")
_NODE = re.compile(r"^node(\d+)$")
_UNITS = (
    ("Ei", 1 << 60),
    ("Pi", 1 << 50),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
)


def quantity_name(size_kb: int) -> str:
    """Page size in kB -> Kubernetes binary quantity: 2048 -> '2Mi', 1048576 -> '1Gi', 1536 -> '1536Ki'."""
    size = size_kb * 1024
    if size == 0:
        return "0"
    for suffix, unit in _UNITS:
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


# (directory, its names...) -> what read_pools reads there: (size name, nr_hugepages path, free_hugepages path)
# of each hugepages-<n>kB entry, in listing order; made once per distinct listing (probes/textkept.py)
_POOL_PLANS: TextKept[tuple[tuple[str, str, str], ...]] = TextKept(64, 4096)
# (NODES, its names...) -> (node number, its hugepages directory) of each node<N> entry, by number
_NODE_PLANS: TextKept[tuple[tuple[int, str], ...]] = TextKept(8, 64 << 10)


def _pool_plan(base: str, names: list[str]) -> tuple[tuple[str, str, str], ...]:
    return tuple((quantity_name(int(m.group(1))), f"{base}/{name}/nr_hugepages", f"{base}/{name}/free_hugepages")
                 for name in names if (m := _POOL.match(name)))


def read_pools(host: HostRoot, base: str) -> list[tuple[str, str | None, str | None]]:
    """(size name, nr_hugepages, free_hugepages) of each hugepages-<n>kB dir under `base`."""
    base = base.rstrip("/")
    names = host.listdir(base)
    plan = _POOL_PLANS.get((base, *names), lambda: _pool_plan(base, names))
    read_line = host.read_line
    return [(size, _int_or_none(read_line(total)), _int_or_none(read_line(free))) for size, total, free in plan]


def _node_plan(names: list[str]) -> tuple[tuple[int, str], ...]:
    return tuple(sorted((int(m.group(1)), f"{NODES}/{name}/hugepages") for name in names if (m := _NODE.match(name))))


def _int_or_none(v: str | None) -> str | None:
    if v is None:
        return None
    try:
        return str(int(v))
    except ValueError:
        return None


class HugepagesProbe(Probe):
    name = "hugepages"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    features = (
        FeatureInfo(
            "memory.hugepages",
            frozenset({"attribute"}),
            attributes=(
                AttributeInfo(
                    "enabled",
                    "bool",
                    GLOBAL + "/hugepages-*kB/nr_hugepages",
                    description="true if any pool has pages",
                ),
                AttributeInfo(
                    "hugepages-<size>",
                    "int",
                    GLOBAL + "/hugepages-<n>kB/nr_hugepages",
                    description="pages in the pool; size as a k8s quantity (2Mi, 1Gi)",
                ),
                AttributeInfo("hugepages-<size>.total", "int", GLOBAL + "/hugepages-<n>kB/nr_hugepages", nfd=False),
                AttributeInfo(
                    "hugepages-<size>.free", "int", GLOBAL + "/hugepages-<n>kB/free_hugepages", nfd=False,
                    volatile=True,
                ),
            ),
            source=GLOBAL,
            absent='enabled: "false" when the directory is missing (kernel without hugetlbfs)',
        ),
        FeatureInfo(
            "memory.hugepages.node",
            frozenset({"instance"}),
            attributes=(
                AttributeInfo("node", "int", NODES + "/node<N>", nfd=False),
                AttributeInfo(
                    "size",
                    "string",
                    NODES + "/node<N>/hugepages/hugepages-<n>kB",
                    nfd=False,
                    description="k8s quantity, e.g. 1Gi",
                ),
                AttributeInfo("total", "int", NODES + "/node<N>/hugepages/hugepages-<n>kB/nr_hugepages", nfd=False),
                AttributeInfo(
                    "free", "int", NODES + "/node<N>/hugepages/hugepages-<n>kB/free_hugepages", nfd=False,
                    volatile=True,
                ),
            ),
            nfd=False,
            source=NODES,
            description="one instance per NUMA node and page size",
            absent="empty (zero instances)",
        ),
    )

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        if not host.exists(GLOBAL):
            # NFD detectHugePages(): ReadDir fails with ErrNotExist -> {"enabled": "false"}, published.
            out.features.add_attributes("memory.hugepages", {"enabled": "false"})
            out.notes.append(f"{GLOBAL} is missing (kernel without hugetlbfs): memory.hugepages enabled=false, as NFD")
        elif not host.is_dir(GLOBAL):
            out.notes.append(f"{GLOBAL} cannot be listed: memory.hugepages left out, as NFD does")
        else:
            attrs: dict[str, str] = {}
            enabled = False
            for size, total, free in read_pools(host, GLOBAL):
                if total is None:
                    # NFD logs the read error and still publishes the pool with an empty value.
                    attrs[f"hugepages-{size}"] = ""
                    out.notes.append(f'{GLOBAL}: nr_hugepages of the {size} pool unreadable: published as "" as NFD')
                    continue
                enabled = enabled or int(total) > 0
                attrs[f"hugepages-{size}"] = total
                attrs[f"hugepages-{size}.total"] = total
                if free is not None:
                    attrs[f"hugepages-{size}.free"] = free
            attrs["enabled"] = str(enabled).lower()
            out.features.add_attributes("memory.hugepages", attrs)

        names = host.listdir(NODES)
        instances = []
        for node, pools in _NODE_PLANS.get((NODES, *names), lambda: _node_plan(names)):
            for size, total, free in read_pools(host, pools):
                inst = {"node": str(node), "size": size}
                if total is not None:
                    inst["total"] = total
                if free is not None:
                    inst["free"] = free
                instances.append(inst)
        out.features.set_instances("memory.hugepages.node", instances)
        return out
