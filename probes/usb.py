"""usb probe: NFD's usb.device instances, from /sys/bus/usb/devices under the host root.

As NFD's source/usb/utils.go: every /sys/bus/usb/devices/*/idProduct names a device (interfaces
and root-hub ports have none); `class` = bDeviceClass, `vendor` = idVendor, `device` = idProduct,
`serial` = serial, each kept only when read and non-empty. USB devices declare their class at the
device or the interface level: when bDeviceClass is `00`, NFD emits one instance per interface
(<dev>/*/bInterfaceClass), with `class` set to that interface's class, and none when the device
has no interfaces; if an interface's class cannot be read, the device is skipped.
Always published (no USB bus -> zero instances), as NFD's Discover() does.
"""

from __future__ import annotations

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput

USB_DEVICES = "/sys/bus/usb/devices"
ATTR_FILES = (("class", "bDeviceClass"), ("vendor", "idVendor"), ("device", "idProduct"), ("serial", "serial"))


def usb_instances(host: HostRoot, dev: str) -> list[dict[str, str]] | None:
    """NFD readUsbDevInfo() for one device path; None when NFD would skip the device."""
    attrs: dict[str, str] = {}
    for attr, fname in ATTR_FILES:
        v = host.read_text(f"{dev}/{fname}")
        if v is not None and v.strip():
            attrs[attr] = v.strip()
    if attrs.get("class") != "00":
        return [attrs]
    out = []
    for name in host.listdir(dev):  # filepath.Glob(dev + "/*/bInterfaceClass"), sorted like Glob
        p = f"{dev}/{name}/bInterfaceClass"
        if not host.exists(p):
            continue
        v = host.read_text(p)
        if v is None:
            return None
        out.append({**attrs, "class": v.strip()})
    return out


class UsbProbe(Probe):
    name = "usb"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    features = (
        FeatureInfo(
            "usb.device",
            frozenset({"instance"}),
            attributes=(
                AttributeInfo(
                    "class",
                    "hex",
                    USB_DEVICES + "/<dev>/bDeviceClass",
                    description="or each interface's bInterfaceClass when the device class is 00",
                ),
                AttributeInfo("vendor", "hex", USB_DEVICES + "/<dev>/idVendor"),
                AttributeInfo("device", "hex", USB_DEVICES + "/<dev>/idProduct"),
                AttributeInfo("serial", "string", USB_DEVICES + "/<dev>/serial"),
            ),
            source=USB_DEVICES,
            absent="empty (zero instances)",
        ),
    )

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        instances: list[dict[str, str]] = []
        for _name, path in host.iterdir(USB_DEVICES):
            if not host.exists(f"{path}/idProduct"):
                continue
            found = usb_instances(host, path)
            if found is None:
                out.notes.append(f"{path}: an interface class is unreadable: device skipped, as NFD does")
                continue
            instances.extend(found)
        out.features.set_instances("usb.device", instances)
        return out
