"""pci probe: NFD's `pci.device` instances, plus the BDF address, driver and NUMA node.

NFD's instances carry no address, so two identical GPUs cannot be told apart and a rule cannot ask
"a GPU and a NIC on the same NUMA node"; we add `address`, `driver` and `numa_node` (NFD ignores
unknown attributes, and a spec written for NFD still sees every attribute it expects). `numa_node`
is kept exactly as the kernel prints it, so "-1" means "no NUMA affinity".
"""

from __future__ import annotations

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.sysfs_pci import PCI_DEVICES, list_pci_devices

_D = PCI_DEVICES + "/<bdf>/"


class PciProbe(Probe):
    name = "pci"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    features = (
        FeatureInfo(
            "pci.device",
            frozenset({"instance"}),
            absent="absent when /sys/bus/pci/devices cannot be listed",
            attributes=(
                AttributeInfo("class", "hex", _D + "class", description="first 4 hex digits, e.g. 0302"),
                AttributeInfo("vendor", "hex", _D + "vendor"),
                AttributeInfo("device", "hex", _D + "device"),
                AttributeInfo("subsystem_vendor", "hex", _D + "subsystem_vendor"),
                AttributeInfo("subsystem_device", "hex", _D + "subsystem_device"),
                AttributeInfo("sriov_totalvfs", "int", _D + "sriov_totalvfs"),
                AttributeInfo("iommu_group/type", "string", _D + "iommu_group/type"),
                AttributeInfo("iommu/intel-iommu/version", "string", _D + "iommu/intel-iommu/version"),
                AttributeInfo(
                    "address",
                    "string",
                    PCI_DEVICES + "/<bdf>",
                    nfd=False,
                    description="PCI address (domain:bus:device.function)",
                ),
                AttributeInfo(
                    "driver",
                    "string",
                    _D + "driver",
                    nfd=False,
                    description="bound driver (symlink target name)",
                ),
                AttributeInfo(
                    "numa_node",
                    "int",
                    _D + "numa_node",
                    nfd=False,
                    description="-1 when the device has no NUMA affinity",
                ),
            ),
            source=PCI_DEVICES,
            description="one instance per PCI function",
        ),
    )

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        if not host.is_dir(PCI_DEVICES):
            # NFD pci.go: detectPci()'s ReadDir fails, Discover() returns the error, nothing is published.
            out.notes.append(f"{PCI_DEVICES} cannot be listed: pci.device left out, as NFD does")
            return out
        devices = list_pci_devices(host)
        # each device's instance made once while its files read the same (PciDevice.instance)
        out.features.put_instances("pci.device", [d.instance() for d in devices])
        skipped = len(host.listdir(PCI_DEVICES)) - len(devices)
        if skipped:
            out.notes.append(f"{skipped} PCI device(s) skipped: a mandatory sysfs file was unreadable")
        return out
