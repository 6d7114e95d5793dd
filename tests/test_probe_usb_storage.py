"""usb and storage probes: NFD's source/usb/utils.go and source/storage/storage.go on host trees."""

from __future__ import annotations

import os
from pathlib import Path

from support_hosts import REAL, instances, run

from nodecompat.hostroot import HostRoot
from nodecompat.probes.storage import StorageProbe
from nodecompat.probes.usb import UsbProbe


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def usb_tree(root: Path) -> HostRoot:
    dev = "sys/devices/pci0000:00/0000:00:14.0/usb1"
    # 1-1: a keyboard+mouse combo, class 00 at the device level, two HID interfaces + one vendor-specific.
    for rel, text in {
        f"{dev}/1-1/bDeviceClass": "00\n",
        f"{dev}/1-1/idVendor": "046d\n",
        f"{dev}/1-1/idProduct": "c52b\n",
        f"{dev}/1-1/serial": "\n",  # empty: dropped (NFD keeps only non-empty values)
        f"{dev}/1-1/1-1:1.0/bInterfaceClass": "03\n",
        f"{dev}/1-1/1-1:1.1/bInterfaceClass": "03\n",
        f"{dev}/1-1/1-1:1.2/bInterfaceClass": "ff\n",
        # 1-2: a hub, class at the device level
        f"{dev}/1-2/bDeviceClass": "09\n",
        f"{dev}/1-2/idVendor": "1d6b\n",
        f"{dev}/1-2/idProduct": "0002\n",
        f"{dev}/1-2/serial": "0000:00:14.0\n",
        f"{dev}/1-2/1-2:1.0/bInterfaceClass": "09\n",
    }.items():
        write(root, rel, text)
    links = root / "sys/bus/usb/devices"
    links.mkdir(parents=True)
    for name, target in (("1-1", "1-1"), ("1-2", "1-2"), ("1-1:1.0", "1-1/1-1:1.0")):
        os.symlink(f"../../../devices/pci0000:00/0000:00:14.0/usb1/{target}", links / name)
    return HostRoot(root)


def test_usb_class_from_interfaces(tmp_path):
    """bDeviceClass 00 -> one instance per interface with class = bInterfaceClass (duplicates kept, as NFD);
    interface entries (1-1:1.0) have no idProduct and are not devices."""
    wire, out = run(UsbProbe(), usb_tree(tmp_path))
    assert instances(wire, "usb.device") == [
        {"class": "03", "vendor": "046d", "device": "c52b"},
        {"class": "03", "vendor": "046d", "device": "c52b"},
        {"class": "ff", "vendor": "046d", "device": "c52b"},
        {"class": "09", "vendor": "1d6b", "device": "0002", "serial": "0000:00:14.0"},
    ]
    assert out.notes == []


def test_usb_no_bus_is_zero_instances(tmp_path):
    """detectUsb(): an empty glob is no error: usb.device is published with no instances."""
    wire, _ = run(UsbProbe(), HostRoot(tmp_path))
    assert instances(wire, "usb.device") == []


def test_storage_block_queue_attributes(tmp_path):
    for rel, text in {
        "sys/devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1/queue/rotational": "0\n",
        "sys/devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1/queue/dax": "0\n",
        "sys/devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1/queue/nr_zones": "0\n",
        "sys/devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1/queue/zoned": "none\n",
        "sys/devices/virtual/block/loop0/queue/rotational": "1\n",  # only one readable attribute
    }.items():
        write(tmp_path, rel, text)
    (tmp_path / "sys/block").mkdir(parents=True)
    os.symlink("../devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1", tmp_path / "sys/block/nvme0n1")
    os.symlink("../devices/virtual/block/loop0", tmp_path / "sys/block/loop0")
    wire, _ = run(StorageProbe(), HostRoot(tmp_path))
    assert instances(wire, "storage.block") == [
        {"name": "loop0", "rotational": "1"},
        {"name": "nvme0n1", "dax": "0", "rotational": "0", "nr_zones": "0", "zoned": "none"},
    ]


def test_storage_without_sys_block_is_absent(tmp_path):
    """storage.go Discover(): detectBlock()'s ReadDir error fails the source: storage.block absent."""
    wire, out = run(StorageProbe(), HostRoot(tmp_path))
    assert instances(wire, "storage.block") is None
    assert out.notes == ["/sys/block cannot be listed: storage.block left out, as NFD does"]


def test_real_host_storage_matches_sysfs():
    wire, _ = run(StorageProbe(), REAL)
    assert [i["name"] for i in instances(wire, "storage.block") or []] == sorted(os.listdir("/sys/block"))
