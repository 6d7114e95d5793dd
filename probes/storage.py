"""storage probe: NFD's storage.block instances, from /sys/block under the host root.

As NFD's source/storage/storage.go: one instance per /sys/block entry (loop, dm, nvme, sd ...)
with `name` and whichever of queue/{dax,rotational,nr_zones,zoned} can be read (values trimmed).
When /sys/block cannot be listed NFD's Discover() fails and storage.block is absent; so here.
"""

from __future__ import annotations

from nodecompat.features import Features, Instance
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.textkept import TextKept

SYS_BLOCK = "/sys/block"
QUEUE_ATTRS = ("dax", "rotational", "nr_zones", "zoned")


# (SYS_BLOCK, names...) -> each entry's name and the paths of its QUEUE_ATTRS files, once per distinct listing
_PLANS: TextKept[tuple[tuple[str, tuple[str, ...]], ...]] = TextKept(8, 64 << 10)
# (name, the QUEUE_ATTRS files' text or None...) -> its storage.block instance (shared), once per distinct input
_INSTANCES: TextKept[Instance] = TextKept(1024, 1024)


def _plan(names: list[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((name, tuple(f"{SYS_BLOCK}/{name}/queue/{a}" for a in QUEUE_ATTRS)) for name in names)


def _instance(key: tuple[str | None, ...]) -> Instance:
    """The storage.block instance of _INSTANCES' `key`: the name and each readable value, trimmed."""
    attrs = {"name": str(key[0])}
    for a, v in zip(QUEUE_ATTRS, key[1:], strict=True):
        if v is not None:
            attrs[a] = v.strip()
    return Instance(attrs)


class StorageProbe(Probe):
    name = "storage"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    features = (
        FeatureInfo(
            "storage.block",
            frozenset({"instance"}),
            attributes=(
                AttributeInfo("name", "string", SYS_BLOCK + "/<dev>"),
                AttributeInfo("dax", "bool", SYS_BLOCK + "/<dev>/queue/dax", description="0 or 1"),
                AttributeInfo("rotational", "bool", SYS_BLOCK + "/<dev>/queue/rotational", description="0 or 1"),
                AttributeInfo("nr_zones", "int", SYS_BLOCK + "/<dev>/queue/nr_zones"),
                AttributeInfo("zoned", "string", SYS_BLOCK + "/<dev>/queue/zoned", description="none, host-aware ..."),
            ),
            source=SYS_BLOCK,
            absent="absent when /sys/block cannot be listed",
        ),
    )

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        if not host.is_dir(SYS_BLOCK):
            out.notes.append(f"{SYS_BLOCK} cannot be listed: storage.block left out, as NFD does")
            return out
        names = host.listdir(SYS_BLOCK)
        read_text = host.read_text
        instances = []
        for name, paths in _PLANS.get((SYS_BLOCK, *names), lambda: _plan(names)):
            key = (name, *(read_text(p) for p in paths))  # every file read every round
            instances.append(_INSTANCES.get(key, lambda key=key: _instance(key)))  # type: ignore[misc]
        out.features.put_instances("storage.block", instances)
        return out
