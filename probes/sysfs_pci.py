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
from dataclasses import dataclass, field
from pathlib import PurePosixPath

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


@dataclass
class PciDevice:
    """One PCI function: NFD's attributes plus the BDF address, driver and NUMA node."""

    address: str
    nfd: dict[str, str]
    driver: str | None = None
    numa_node: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

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


def read_pci_device(host: HostRoot, address: str) -> PciDevice | None:
    """Read one device under /sys/bus/pci/devices/<address>; None if a mandatory file is unreadable."""
    base = f"{PCI_DEVICES}/{address}/"
    read_line = host.read_line
    raw = read_line(base + "class")
    if not raw:  # None or ""
        return None
    nfd: dict[str, str] = {"class": strip_hex(raw)[:4]}  # class_code
    for name in _MANDATORY_IDS:
        raw = read_line(base + name)
        if not raw:
            return None
        v = raw.strip()  # strip_hex, inline
        nfd[name] = v[2:] if v[:2] in _HEX_PREFIXES else v
    for attr, rel in _OPTIONAL_ITEMS:
        raw = read_line(base + rel)
        if raw:
            nfd[attr] = raw
    driver = host.link_target_name(base + "driver")
    numa = read_line(base + "numa_node")
    return PciDevice(address=address, nfd=nfd, driver=driver, numa_node=numa or None)


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
    for part in reversed(PurePosixPath(real).parts):
        if BDF_RE.match(part):
            return part
    return None
