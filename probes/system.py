r"""system probe: NFD's system.osrelease, system.dmiid and system.name.

system.name.nodename is the Kubernetes node name. NFD takes it from $NODE_NAME (set from the pod's
spec.nodeName); the daemon may pass one explicitly (`node_name`, `serve --node-name`), which wins.
When neither is set nothing establishes the node name (a hostname is not always the node name:
EKS names nodes ip-10-..., some clusters use FQDNs), so `nodename` is left out and the status says so.
os-release is read from /etc/os-release only, as NFD's parseOSRelease() (symlinks such as RHCOS's
../usr/lib/os-release, or an absolute /usr/lib/os-release, resolve inside the host root); lines are
NFD's `^(\w+)=(.+)` with quotes trimmed, VERSION_ID.major/.minor by NFD's splitVersion() regex.
"""

from __future__ import annotations

import os
import re

from nodecompat.features import AttributeFeature, Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.probe_memo import noted
from nodecompat.probes.textkept import TextKept

OS_RELEASE = "/etc/os-release"
DMI_ID = "/sys/devices/virtual/dmi/id"
DMI_ATTRS = (
    "bios_date", "bios_vendor", "bios_version", "board_asset_tag", "board_name", "board_vendor",
    "board_version", "chassis_asset_tag", "chassis_type", "chassis_vendor", "chassis_version",
    "product_family", "product_name", "product_sku", "product_version", "sys_vendor",
)  # fmt: skip

_LINE = re.compile(r"^(\w+)=(.+)", re.ASCII)  # NFD parseOSRelease
_VERSION = re.compile(r"^(?P<major>\d+)(\.(?P<minor>\d+))?(\..*)?$", re.ASCII)  # NFD splitVersion


def parse_os_release(text: str) -> dict[str, str]:
    """Every `KEY=value` line (quotes trimmed), plus VERSION_ID.major/.minor when numeric.

    Like NFD: lines that are not `\\w+=.+` (comments, empty values, indented) are skipped.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out[m.group(1)] = m.group(2).strip("\"'")  # strings.Trim(value, `"'`): no whitespace trim
    vid = out.get("VERSION_ID")
    if vid:
        m2 = _VERSION.match(vid)
        if m2:
            for part in ("major", "minor"):
                if m2.group(part):
                    out[f"VERSION_ID.{part}"] = m2.group(part)
    return out


_DMI_PATHS = tuple((a, f"{DMI_ID}/{a}") for a in DMI_ATTRS)
_OS_RELEASES: TextKept[AttributeFeature] = TextKept(4, 16 << 10)  # os-release text -> system.osrelease (shared)


class SystemProbe(Probe):
    name = "system"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    features = (
        FeatureInfo(
            "system.osrelease",
            frozenset({"attribute"}),
            absent="absent when os-release is unreadable",
            attributes=None,
            source=OS_RELEASE,
            description="every KEY=value (ID, VERSION_ID, ...) plus VERSION_ID.major/.minor",
        ),
        FeatureInfo(
            "system.dmiid",
            frozenset({"attribute"}),
            absent="absent when no DMI file is readable (DMI-less VMs)",
            attributes=tuple(AttributeInfo(a, "string", f"{DMI_ID}/{a}") for a in DMI_ATTRS),
            source=DMI_ID,
            description="absent when no DMI file is readable (VMs without SMBIOS)",
        ),
        FeatureInfo(
            "system.name",
            frozenset({"attribute"}),
            absent='always published (NFD: "" when $NODE_NAME is unset)',
            attributes=(
                AttributeInfo(
                    "nodename",
                    "string",
                    "$NODE_NAME",
                    description="node name (argument, $NODE_NAME, else hostname)",
                ),
            ),
            source="$NODE_NAME",
        ),
    )

    def __init__(self, node_name: str | None = None) -> None:
        self.node_name = node_name

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        f = out.features
        text = host.read_text(OS_RELEASE)
        if text is None:
            out.notes.append(f"{OS_RELEASE} unreadable: system.osrelease left out")
        else:
            # made once per distinct text (probes/textkept.py): the feature object is shared, str values
            f.attributes["system.osrelease"] = _OS_RELEASES.get(text, lambda: AttributeFeature(parse_os_release(text)))

        dmi = {}
        read_line = host.read_line
        for a, path in _DMI_PATHS:
            v = read_line(path)
            if v is not None:
                dmi[a] = v
        if dmi:
            f.add_attributes("system.dmiid", dmi)

        name = self.node_name or noted(host, os.environ.get, "NODE_NAME")  # an input a replay asks again
        if name:
            f.add_attributes("system.name", {"nodename": name})
        else:
            f.add_attributes("system.name", {})
            out.notes.append("no node name given ($NODE_NAME unset, no --node-name): system.name nodename left out")
        return out
