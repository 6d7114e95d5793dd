"""storage probe: NFD's storage.block instances, from /sys/block under the host root.

As NFD's source/storage/storage.go: one instance per /sys/block entry (loop, dm, nvme, sd ...)
with `name` and whichever of queue/{dax,rotational,nr_zones,zoned} can be read (values trimmed).
When /sys/block cannot be listed NFD's Discover() fails and storage.block is absent; so here.
"""

from __future__ import annotations

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput

SYS_BLOCK = "/sys/block"
QUEUE_ATTRS = ("dax", "rotational", "nr_zones", "zoned")


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
        instances = []
        for name, path in host.iterdir(SYS_BLOCK):
            attrs = {"name": name}
            for a in QUEUE_ATTRS:
                v = host.read_text(f"{path}/queue/{a}")
                if v is not None:
                    attrs[a] = v.strip()
            instances.append(attrs)
        out.features.set_instances("storage.block", instances)
        return out
