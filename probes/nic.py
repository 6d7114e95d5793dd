"""nic probe: NFD's `network.device` / `network.virtual` instances, plus driver, PCI address, NUMA.

As in NFD (source/network), an interface is physical when /sys/class/net/<if>/device exists, every
value is the sysfs file's text as is (a link without carrier reads speed -1 on virtio and NFD keeps
that), and a value whose read fails (EINVAL from `speed` on lo/ifb/down links) is omitted.
`bonding_masters` is a control file, not an interface, and is skipped.

We read sysfs rather than psutil.net_if_stats(): psutil reports speed 0 for both "unknown" and
"unreadable", loses the sriov files and the device link, and only sees the real host, not a root.
"""

from __future__ import annotations

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.sysfs_pci import PCI_DEVICES, pci_address_of

NET = "/sys/class/net"
_I = NET + "/<if>/"
IFACE_FILES = ("operstate", "speed", "mtu")
DEVICE_FILES = ("sriov_numvfs", "sriov_totalvfs")

_COMMON = (
    AttributeInfo("name", "string", NET + "/<if>"),
    AttributeInfo("operstate", "string", _I + "operstate"),
    AttributeInfo("speed", "int", _I + "speed", description="Mb/s; -1 when unknown; absent if unreadable"),
    AttributeInfo("mtu", "int", _I + "mtu"),
)


class NicProbe(Probe):
    name = "nic"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    features = (
        FeatureInfo(
            "network.device",
            frozenset({"instance"}),
            absent="absent when /sys/class/net cannot be listed; else possibly zero instances",
            attributes=(
                *_COMMON,
                AttributeInfo("sriov_numvfs", "int", _I + "device/sriov_numvfs"),
                AttributeInfo("sriov_totalvfs", "int", _I + "device/sriov_totalvfs"),
                AttributeInfo("driver", "string", _I + "device/driver", nfd=False),
                AttributeInfo(
                    "address",
                    "string",
                    _I + "device",
                    nfd=False,
                    description="PCI address of the function behind the interface",
                ),
                AttributeInfo("numa_node", "int", PCI_DEVICES + "/<bdf>/numa_node", nfd=False),
            ),
            source=NET,
            description="physical interfaces (those with a device link)",
        ),
        FeatureInfo(
            "network.virtual",
            frozenset({"instance"}),
            absent="absent when /sys/class/net cannot be listed; else possibly zero instances",
            attributes=_COMMON,
            source=NET,
            description="virtual interfaces (lo, bridges, veth, ifb ...)",
        ),
    )

    def discover(self, host: HostRoot) -> ProbeOutput:
        if not host.is_dir(NET):
            # NFD network.go: detectNetDevices() fails, Discover() returns the error, nothing is published.
            out = ProbeOutput(Features())
            out.notes.append(f"{NET} cannot be listed: network.device and network.virtual left out, as NFD does")
            return out
        physical: list[dict[str, str]] = []
        virtual: list[dict[str, str]] = []
        for name, path in host.iterdir(NET):
            if name == "bonding_masters":
                continue
            attrs = {"name": name}
            for f in IFACE_FILES:
                v = host.read_line(f"{path}/{f}")
                if v is not None:
                    attrs[f] = v
            if host.exists(f"{path}/device"):
                physical.append(self._physical(host, path, attrs))
            else:
                virtual.append(attrs)
        out = ProbeOutput(Features())
        out.features.set_instances("network.device", physical)
        out.features.set_instances("network.virtual", virtual)
        return out

    @staticmethod
    def _physical(host: HostRoot, path: str, attrs: dict[str, str]) -> dict[str, str]:
        for f in DEVICE_FILES:
            v = host.read_line(f"{path}/device/{f}")
            if v is not None:
                attrs[f] = v
        driver = host.link_target_name(f"{path}/device/driver")
        if driver is not None:
            attrs["driver"] = driver
        bdf = pci_address_of(host, f"{path}/device")
        if bdf is not None:
            attrs["address"] = bdf
            numa = host.read_line(f"{PCI_DEVICES}/{bdf}/numa_node")
            if numa:
                attrs["numa_node"] = numa
        return attrs
