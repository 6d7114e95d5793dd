"""Names from the pci.ids database (/usr/share/misc/pci.ids or /usr/share/hwdata/pci.ids).

Only a handful of lookups (one per GPU) are needed, so rather than load the ~1.3 MB file into a
dict (or depend on a package that bundles its own copy, which would describe the probing machine
instead of the host root) we scan the text once per lookup: vendor line, then its device lines,
then the device's subsystem lines. Format: `vvvv  Vendor`, `\\tdddd  Device`,
`\\t\\tssvv ssdd  Subsystem`; `C ...` class sections end the device list.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodecompat.hostroot import HostRoot

PCI_IDS_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids")


@dataclass(frozen=True)
class PciName:
    vendor: str | None = None
    device: str | None = None
    subsystem: str | None = None


def lookup(text: str, vendor: str, device: str, sub_vendor: str = "", sub_device: str = "") -> PciName:
    """Names of a vendor/device(/subsystem) in pci.ids text; missing parts are None."""
    vendor, device = vendor.lower(), device.lower()
    sub = f"{sub_vendor.lower()} {sub_device.lower()}"
    vname = dname = sname = None
    in_vendor = in_device = False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if not line.startswith("\t"):
            if in_vendor:
                break  # next vendor or class section
            if line[:4].lower() == vendor and line[4:6] == "  ":
                vname, in_vendor = line[6:].strip(), True
            continue
        if not in_vendor:
            continue
        if line.startswith("\t\t"):
            if in_device and line[2:11].lower() == sub and line[11:13] == "  ":
                sname = line[13:].strip()
                break
            continue
        if in_device:
            break  # next device: no matching subsystem
        if line[1:5].lower() == device and line[5:7] == "  ":
            dname, in_device = line[7:].strip(), True
    return PciName(vname, dname, sname)


def read_pci_ids(host: HostRoot) -> str | None:
    for p in PCI_IDS_PATHS:
        text = host.read_text(p)
        if text is not None:
            return text
    return None


def marketing_name(name: str) -> str:
    """'GH100 [H100 SXM5 80GB]' -> 'H100 SXM5 80GB' (pci.ids puts the product name in brackets)."""
    if name.endswith("]") and "[" in name:
        return name[name.rindex("[") + 1 : -1].strip()
    return name
