"""Names from the pci.ids database (/usr/share/misc/pci.ids or /usr/share/hwdata/pci.ids).

Only a handful of lookups (one per GPU) are needed, so rather than load the ~1.3 MB file into a
dict (or depend on a package that bundles its own copy, which would describe the probing machine
instead of the host root) we scan the text once per lookup: vendor line, then its device lines,
then the device's subsystem lines (host_pci_ids keeps the file and its lookups between rounds while the
file is unchanged). Format: `vvvv  Vendor`, `\\tdddd  Device`,
`\\t\\tssvv ssdd  Subsystem`; `C ...` class sections end the device list.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodecompat.hostroot import HostRoot
from nodecompat.probes import parsecache

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
    """The text of the first of PCI_IDS_PATHS that reads, or None."""
    for p in PCI_IDS_PATHS:
        text = host.read_text(p)
        if text is not None:
            return text
    return None


MAX_LOOKUPS = 64  # names kept per pci.ids file (a host has a few GPU models); cleared when full


class PciIds:
    """The text of one pci.ids file and the names looked up in it so far (at most MAX_LOOKUPS)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._names: dict[tuple[str, str, str, str], PciName] = {}

    def name(self, vendor: str, device: str, sub_vendor: str = "", sub_device: str = "") -> PciName:
        """lookup(self.text, vendor, device, sub_vendor, sub_device), each key scanned for once."""
        key = (vendor, device, sub_vendor, sub_device)
        hit = self._names.get(key)
        if hit is None:
            hit = lookup(self.text, vendor, device, sub_vendor, sub_device)
            if len(self._names) >= MAX_LOOKUPS:
                self._names.clear()
            self._names[key] = hit
        return hit


def host_pci_ids(host: HostRoot) -> PciIds:
    """The host's pci.ids as read_pci_ids finds it (an empty text when none reads), kept between rounds
    while the file's identity (device, inode, size, mtime from the round's confined stat) is unchanged
    (probes/parsecache.py, as the kernel config): a ~1.3 MB file is then neither read nor scanned again
    for a name already looked up (a scan splits the whole text into lines: milliseconds a GPU). A path
    that is not a regular file is read as read_pci_ids reads it, for this call only. As for the kernel
    config, a regular file found unreadable is taken as unreadable until its identity changes; a path that
    cannot be stat'ed (missing) is not read."""
    for p in PCI_IDS_PATHS:
        st = parsecache.stat_result(host, p)
        if st is None:  # missing: nothing to read
            continue
        ident = parsecache.identity_of(st)
        if ident is None:  # not a regular file: read as before, nothing kept
            text = host.read_text(p)
            if text is not None:
                return PciIds(text)
            continue

        def load(p: str = p) -> PciIds | None:
            text = host.read_text(p)
            return None if text is None else PciIds(text)

        found = parsecache.parsed(host, p, "pci.ids", load, ident)
        if found is not None:
            return found
    return PciIds("")


def marketing_name(name: str) -> str:
    """'GH100 [H100 SXM5 80GB]' -> 'H100 SXM5 80GB' (pci.ids puts the product name in brackets)."""
    if name.endswith("]") and "[" in name:
        return name[name.rindex("[") + 1 : -1].strip()
    return name
