"""nic probe: NFD's `network.device` / `network.virtual` instances, plus driver, PCI address, NUMA.

As in NFD (source/network), an interface is physical when /sys/class/net/<if>/device exists, every
value is the sysfs file's text as is (a link without carrier reads speed -1 on virtio and NFD keeps
that), and a value whose read fails (EINVAL from `speed` on lo/ifb/down links) is omitted.
`bonding_masters` is a control file, not an interface, and is skipped.

We read sysfs rather than psutil.net_if_stats(): psutil reports speed 0 for both "unknown" and
"unreadable", loses the sriov files and the device link, and only sees the real host, not a root.
"""

from __future__ import annotations

from nodecompat.features import Features, Instance
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.sysfs_pci import PCI_DEVICES, pci_address_of
from nodecompat.probes.textkept import TextKept

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


# (NET, names...) -> (name, its directory, [IFACE_FILES paths], its device link) of each interface, once per
# distinct listing (bonding_masters left out)
_PLANS: TextKept[tuple[tuple[str, str, tuple[str, ...], str], ...]] = TextKept(8, 64 << 10)
# (kind, name, the values read...) -> the interface's instance (shared), once per distinct input: kind "v" a
# virtual one (IFACE_FILES' values), "p" a physical one (then DEVICE_FILES', driver, address, numa_node)
_INSTANCES: TextKept[Instance] = TextKept(1024, 2048)
_ATTRS_V = IFACE_FILES
_ATTRS_P = (*IFACE_FILES, *DEVICE_FILES, "driver", "address")


def _plan(names: list[str]) -> tuple[tuple[str, str, tuple[str, ...], str], ...]:
    return tuple((name, f"{NET}/{name}", tuple(f"{NET}/{name}/{f}" for f in IFACE_FILES), f"{NET}/{name}/device")
                 for name in names if name != "bonding_masters")


def _instance(key: tuple[str | None, ...]) -> Instance:
    """The instance of _INSTANCES' `key`: the name, then each value that is not None (numa_node: not empty)."""
    attrs = {"name": str(key[1])}
    for a, v in zip(_ATTRS_V if key[0] == "v" else _ATTRS_P, key[2:], strict=False):
        if v is not None:
            attrs[a] = v
    if key[0] == "p" and key[-2] is not None and key[-1]:
        attrs["numa_node"] = str(key[-1])
    return Instance(attrs)


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
        physical: list[Instance] = []
        virtual: list[Instance] = []
        names = host.listdir(NET)
        read_line = host.read_line
        for name, path, files, device in _PLANS.get((NET, *names), lambda: _plan(names)):
            values = [read_line(f) for f in files]
            if host.exists(device):
                key = ("p", name, *values, *self._physical(host, path))
                physical.append(_INSTANCES.get(key, lambda key=key: _instance(key)))  # type: ignore[misc]
            else:
                key = ("v", name, *values)
                virtual.append(_INSTANCES.get(key, lambda key=key: _instance(key)))  # type: ignore[misc]
        out = ProbeOutput(Features())
        out.features.put_instances("network.device", physical)
        out.features.put_instances("network.virtual", virtual)
        return out

    @staticmethod
    def _physical(host: HostRoot, path: str) -> tuple[str | None, ...]:
        """(sriov_numvfs, sriov_totalvfs, driver, PCI address, that function's numa_node) as read, None for
        what is unreadable (numa_node: None without an address)."""
        values: list[str | None] = [host.read_line(f"{path}/device/{f}") for f in DEVICE_FILES]
        values.append(host.link_target_name(f"{path}/device/driver"))
        bdf = pci_address_of(host, f"{path}/device")
        values.append(bdf)
        values.append(host.read_line(f"{PCI_DEVICES}/{bdf}/numa_node") if bdf is not None else None)
        return tuple(values)
