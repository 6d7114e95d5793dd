"""Reading one PCI device from sysfs the way NFD's pci source does, plus what NFD leaves out.

pci, gpu and nic all need the same facts about a PCI function (class, IDs, driver, NUMA node), so
they are read here once. NFD (source/pci) requires class/vendor/device/subsystem_vendor/
subsystem_device and skips a device when any of them is unreadable; it strips the "0x" prefix and
keeps only the first 4 hex digits of the class. We read sysfs directly instead of through pyudev:
on hosts without a udev database (like containers and this sandbox) pyudev only re-reads the same
sysfs files, and under a fixture root it cannot be pointed at a different tree.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from nodecompat.features import Instance
from nodecompat.hostroot import HostRoot
from nodecompat.probes import parsecache

PCI_DEVICES = "/sys/bus/pci/devices"

# A PCI "BDF" address with domain, e.g. 0000:17:00.0.
BDF_RE = re.compile(r"^[0-9a-fA-F]{4,}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")

MANDATORY = ("class", "vendor", "device", "subsystem_vendor", "subsystem_device")
# Optional NFD attributes: attribute name -> file under the device directory.
OPTIONAL = {
    "sriov_totalvfs": "sriov_totalvfs",
    "iommu_group/type": "iommu_group/type",
    "iommu/intel-iommu/version": "iommu/intel-iommu/version",
}

_MANDATORY_IDS = MANDATORY[1:]  # after "class", read first
_OPTIONAL_ITEMS = tuple(OPTIONAL.items())


@dataclass(eq=False)
class PciDevice:
    """One PCI function: NFD's attributes plus the BDF address, driver and NUMA node.

    A device read by read_pci_device is shared: by the probes of a round, and between rounds while its
    files read the same (_DEVICES); it must not be changed. `derived` holds what its consumers derive from
    it alone (the pci.device instance, whether it is a GPU, the gpu.device instance for the last extra input),
    so a device whose files are unchanged is derived once, not every round; a fixed few keys."""

    address: str
    nfd: dict[str, str]
    driver: str | None = None
    numa_node: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    derived: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def vendor(self) -> str:
        return self.nfd["vendor"]

    @property
    def device(self) -> str:
        return self.nfd["device"]

    @property
    def pci_class(self) -> str:
        return self.nfd["class"]

    def attributes(self) -> dict[str, str]:
        """The pci.device instance attributes: NFD's plus address, driver, numa_node when known."""
        out = dict(self.nfd)
        out["address"] = self.address
        if self.driver is not None:
            out["driver"] = self.driver
        if self.numa_node is not None:
            out["numa_node"] = self.numa_node
        return out

    def instance(self) -> Instance:
        """The pci.device instance (attributes(), str values), made once per device; shared: not to be
        changed (Features.put_instances)."""
        got = self.derived.get("pci.device")
        if got is None:
            got = self.derived["pci.device"] = Instance(self.attributes())
        return got


def strip_hex(value: str) -> str:
    """'0x10de' -> '10de' (NFD strips the prefix and keeps the case the kernel printed)."""
    v = value.strip()
    # v.lower().startswith("0x") without lowering the whole value: only "0", "x" and "X" lower to text
    # starting with "0" or "x" (every code point checked)
    return v[2:] if v[:2] in _HEX_PREFIXES else v


_HEX_PREFIXES = ("0x", "0X")


def class_code(value: str) -> str:
    """'0x030200' -> '0302': NFD keeps the first 4 hex digits (base class and subclass)."""
    return strip_hex(value)[:4]


# Devices as read, by the text of their files (address, class, vendor, device, subsystem_vendor,
# subsystem_device, the three optional files, driver link name, numa_node): a round reads every file, and a
# device whose files read as last time is the object built then (its derivations kept with it). Bounded:
# MAX_DEVICES entries of at most MAX_DEVICE_CHARS characters of text each (sysfs values are a few bytes; a
# host root's file may be long: such a device is built every time, never kept); cleared when full.
MAX_DEVICES = 512
MAX_DEVICE_CHARS = 1024
_DEVICES: dict[tuple[str | None, ...], PciDevice] = {}
_PATHS: dict[str, tuple[str, ...]] = {}  # address -> the 10 host paths read_pci_device reads, same bound
_lock = threading.Lock()


def _paths_of(address: str) -> tuple[str, ...]:
    base = f"{PCI_DEVICES}/{address}/"
    paths = (base + "class", *(base + n for n in _MANDATORY_IDS), *(base + rel for _, rel in _OPTIONAL_ITEMS),
             base + "driver", base + "numa_node")
    with _lock:
        if len(_PATHS) >= MAX_DEVICES:
            _PATHS.clear()
        _PATHS[address] = paths
    return paths


def read_pci_device(host: HostRoot, address: str) -> PciDevice | None:
    """Read one device under /sys/bus/pci/devices/<address>; None if a mandatory file is unreadable (empty or
    missing: NFD's pci source skips it). Every file is read on every call; the device returned is shared
    (see PciDevice) and the same object while its files read the same."""
    paths = _PATHS.get(address) or _paths_of(address)
    read_line = host.read_line
    raw = read_line(paths[0])
    if not raw:  # None or ""
        return None
    ids = [address, raw]
    for i in (1, 2, 3, 4):  # _MANDATORY_IDS
        raw = read_line(paths[i])
        if not raw:
            return None
        ids.append(raw)
    key = (*ids, read_line(paths[5]), read_line(paths[6]), read_line(paths[7]), host.link_target_name(paths[8]),
           read_line(paths[9]))
    dev = _DEVICES.get(key)
    if dev is None:
        dev = _device(key)
    return dev


def _device(key: tuple[str | None, ...]) -> PciDevice:
    """The PciDevice of read_pci_device's `key`, kept in _DEVICES when small enough."""
    address, cls = key[0], key[1]
    assert address is not None and cls is not None
    nfd: dict[str, str] = {"class": strip_hex(cls)[:4]}  # class_code
    for name, raw in zip(_MANDATORY_IDS, key[2:6], strict=True):
        assert raw is not None
        nfd[name] = strip_hex(raw)
    for (attr, _), raw in zip(_OPTIONAL_ITEMS, key[6:9], strict=True):
        if raw:
            nfd[attr] = raw
    dev = PciDevice(address=address, nfd=nfd, driver=key[9], numa_node=key[10] or None)
    if sum(len(v) for v in key if v is not None) <= MAX_DEVICE_CHARS:
        with _lock:
            if len(_DEVICES) >= MAX_DEVICES:
                _DEVICES.clear()
            _DEVICES[key] = dev
    return dev


def list_pci_devices(host: HostRoot) -> list[PciDevice]:
    """Every readable PCI device, sorted by address; read once per round (the gpu and pci probes share
    it: not to be changed)."""
    return parsecache.per_round(host, "list_pci_devices", lambda: _list_pci_devices(host))


def _list_pci_devices(host: HostRoot) -> list[PciDevice]:
    out = []
    for name in host.listdir(PCI_DEVICES):
        dev = read_pci_device(host, name)
        if dev is not None:
            out.append(dev)
    return out


def pci_address_of(host: HostRoot, host_path: str) -> str | None:
    """The PCI address a sysfs device link leads to (walking up from e.g. a virtio child), or None.

    /sys/class/net/eth0/device may point at the PCI function itself (mlx5) or at a child bus
    device (virtio-net: .../0000:00:03.0/virtio2), so we resolve the link within the host root and
    take the nearest path component that looks like a BDF.
    """
    try:
        real = host.host_resolve(host_path, strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop (RuntimeError before 3.13)
        return None
    # the resolved path's components (what PurePosixPath(real).parts gives, without building a path object:
    # a resolved path has no empty, "." or ".." component)
    for part in reversed(real.split("/")):
        if BDF_RE.match(part):
            return part
    return None
