"""The cloud fixture hosts (tests/fixtures/hosts/cloud_hosts.py): the exact features NFD would publish.

Each host runs a full probe round; the NFD view of the result (nodecompat additions hidden, as
`features --nfd-only`) must equal what NFD's sources derive from the same files, feature by
feature. The NFD source deciding each value is cited beside it. cpu.cpuid (flag mapping, covered
by test_probe_cpu.py), kernel.config (the config text itself) and system.name ($NODE_NAME) are
checked separately or left to their own tests.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from support_hosts import CLOUD_HOST_NAMES, fixture_host

from nodecompat.engine.evaluate import evaluate
from nodecompat.engine.spec import parse_spec
from nodecompat.probes.catalog import FeatureCatalog
from nodecompat.probes.runner import ProbeRound, probe_once

SKIP = {"cpu.cpuid", "kernel.config", "system.name", "system.osrelease", "local.feature", "local.label"}
EMPTY_CPU = {f"cpu.{n}": {} for n in ("coprocessor", "cstate", "pstate", "rdt", "security", "sst")}
NO_HUGEPAGES = {"enabled": "false", "hugepages-1Gi": "0", "hugepages-2Mi": "0"}
ONE_NODE = {"is_numa": "false", "node_count": "1"}
NO_SWAP = {"enabled": "false"}
LO = [{"name": "lo", "operstate": "unknown", "mtu": "65536"}]


def disk(name: str, rotational: str) -> dict[str, str]:
    """source/storage/storage.go readBlockDevQueueInfo(): name + queue/{dax,rotational,nr_zones,zoned}."""
    return {"name": name, "dax": "0", "rotational": rotational, "nr_zones": "0", "zoned": "none"}


def nic_pci(vendor: str, device: str) -> dict[str, str]:
    """source/pci/utils.go mandatoryDevAttrs (class is the first 4 hex digits of 0x020000)."""
    return {"class": "0200", "vendor": vendor, "device": device, "subsystem_vendor": vendor, "subsystem_device": device}


# host -> NFD feature -> elements (attributes: dict; flags: set; instances: list of dicts)
EXPECTED: dict[str, dict[str, Any]] = {
    "rhcos-4.16": {
        # cpu.go getCPUModel; no cpuinfo `hypervisor` flag -> getHypervisor() "none"
        "cpu.model": {"vendor_id": "Intel", "family": "6", "id": "106", "hypervisor": "none"},
        "cpu.topology": {"hardware_multithreading": "true", "socket_count": "2"},  # cpu.go discoverTopology
        # coprocessor_stub.go; security_amd64.go; power_amd64.go (no base_frequency files)
        "cpu.coprocessor": {}, "cpu.security": {}, "cpu.sst": {},
        "cpu.pstate": {"status": "active", "turbo": "true", "scaling_governor": "performance"},  # pstate_amd64.go
        "cpu.cstate": {"enabled": "true"},  # cstate_amd64.go: intel_idle, max_cstate 9
        # rdt_linux_amd64.go (cqm, cqm_llc, cqm_occup_llc, cqm_mbm_*, rdt_a, cat_l3, mba); num_closids 16 - 1
        "cpu.rdt": {"RDTMON": "true", "RDTCMT": "true", "RDTMBM": "true", "RDTL3CA": "true",
                    "RDTL3CA_NUM_CLOSID": "15", "RDTMBA": "true"},
        # kernel/version.go parseVersion
        "kernel.version": {"full": "5.14.0-427.22.1.el9_4.x86_64", "major": "5", "minor": "14", "revision": "0"},
        "kernel.selinux": {"enabled": "true"}, "kernel.kvm": {"enabled": "true"},  # selinux.go, kvm.go
        "kernel.loadedmodule": {"vfio_pci", "vfio", "overlay", "ice", "xfs", "nf_tables", "ip_tables"},
        # modules.go getBuiltinModules: only *.ko lines of /lib/modules/<v>/modules.builtin (lib -> usr/lib)
        "kernel.enabledmodule": {"vfio_pci", "vfio", "overlay", "ice", "xfs", "nf_tables", "ip_tables",
                                 "intel-iommu", "ext4", "vhost"},
        "memory.hugepages": {"enabled": "true", "hugepages-2Mi": "512", "hugepages-1Gi": "0"},  # detectHugePages
        "memory.numa": {"is_numa": "true", "node_count": "2"}, "memory.swap": NO_SWAP, "memory.nv": [],
        "system.dmiid": {"sys_vendor": "Dell Inc.", "product_name": "PowerEdge R750", "bios_vendor": "Dell Inc.",
                         "bios_version": "1.13.2", "chassis_type": "23"},
        "storage.block": [disk("nvme0n1", "0"), disk("sda", "1")], "usb.device": [],
        "pci.device": [nic_pci("8086", "159b")],
        "network.device": [{"name": "ens1f0", "operstate": "up", "mtu": "1500", "speed": "25000"}],
        "network.virtual": LO,
    },
    "photon-5": {
        "cpu.model": {"vendor_id": "Intel", "family": "6", "id": "85", "hypervisor": "vmware"},  # DMI VMware, Inc.
        "cpu.topology": {"hardware_multithreading": "false", "socket_count": "1"}, **EMPTY_CPU,
        "kernel.version": {"full": "6.1.83-1.ph5-esx", "major": "6", "minor": "1", "revision": "83"},
        "kernel.selinux": {"enabled": "false"}, "kernel.kvm": {"enabled": "false"},
        "kernel.loadedmodule": {"vmw_pvscsi", "vmxnet3", "overlay", "br_netfilter"},
        "kernel.enabledmodule": {"vmw_pvscsi", "vmxnet3", "overlay", "br_netfilter", "ext4", "sd_mod"},
        "memory.hugepages": {"enabled": "false", "hugepages-2Mi": "0"}, "memory.numa": ONE_NODE,
        "memory.swap": NO_SWAP, "memory.nv": [],
        "system.dmiid": {"sys_vendor": "VMware, Inc.", "product_name": "VMware7,1", "bios_vendor": "VMware, Inc.",
                         "chassis_type": "1"},
        "storage.block": [disk("sda", "1")], "usb.device": [], "pci.device": [nic_pci("15ad", "07b0")],
        "network.device": [{"name": "eth0", "operstate": "up", "mtu": "1500", "speed": "10000"}],
        "network.virtual": LO,
    },
    "al2-eks": {
        # Nitro: kvm-clock clocksource -> KVMKVMKVM -> "kvm"
        "cpu.model": {"vendor_id": "Intel", "family": "6", "id": "85", "hypervisor": "kvm"},
        "cpu.topology": {"hardware_multithreading": "true", "socket_count": "1"}, **EMPTY_CPU,
        "kernel.version": {"full": "5.10.219-208.866.amzn2.x86_64", "major": "5", "minor": "10", "revision": "219"},
        "kernel.selinux": {"enabled": "false"}, "kernel.kvm": {"enabled": "false"},
        "kernel.loadedmodule": {"ena", "nvme", "overlay", "br_netfilter", "xfs"},
        "kernel.enabledmodule": {"ena", "nvme", "overlay", "br_netfilter", "xfs", "nvme-core", "ext4"},
        "memory.hugepages": NO_HUGEPAGES, "memory.numa": ONE_NODE, "memory.swap": NO_SWAP, "memory.nv": [],
        "system.dmiid": {"sys_vendor": "Amazon EC2", "bios_vendor": "Amazon EC2", "bios_version": "1.0",
                         "chassis_type": "1", "board_vendor": "Amazon EC2", "product_name": "m5.xlarge"},
        "storage.block": [disk("nvme0n1", "0")], "usb.device": [], "pci.device": [nic_pci("1d0f", "ec20")],
        "network.device": [{"name": "eth0", "operstate": "up", "mtu": "9001"}], "network.virtual": LO,
    },
    "al2023-eks": {
        "cpu.model": {"vendor_id": "Intel", "family": "6", "id": "143", "hypervisor": "kvm"},
        "cpu.topology": {"hardware_multithreading": "true", "socket_count": "1"}, **EMPTY_CPU,
        "kernel.version": {"full": "6.1.94-99.176.amzn2023.x86_64", "major": "6", "minor": "1", "revision": "94"},
        "kernel.selinux": {"enabled": "false"}, "kernel.kvm": {"enabled": "false"},
        "kernel.loadedmodule": {"ena", "overlay", "br_netfilter", "xfs"},
        "kernel.enabledmodule": {"ena", "overlay", "br_netfilter", "xfs", "nvme-core", "nvme"},
        "memory.hugepages": NO_HUGEPAGES, "memory.numa": ONE_NODE, "memory.swap": NO_SWAP, "memory.nv": [],
        "system.dmiid": {"sys_vendor": "Amazon EC2", "bios_vendor": "Amazon EC2", "bios_version": "1.0",
                         "chassis_type": "1", "board_vendor": "Amazon EC2", "product_name": "m7i.2xlarge"},
        "storage.block": [disk("nvme0n1", "0"), disk("nvme1n1", "0")], "usb.device": [],
        "pci.device": [nic_pci("1d0f", "ec20")],
        "network.device": [{"name": "ens5", "operstate": "up", "mtu": "9001"}], "network.virtual": LO,
    },
    "cos-113": {
        "cpu.model": {"vendor_id": "AMD", "family": "25", "id": "1", "hypervisor": "kvm"},
        "cpu.topology": {"hardware_multithreading": "true", "socket_count": "1"}, **EMPTY_CPU,
        # "6.1.85+" -> '+' replaced by '_' then trimmed: full "6.1.85"
        "kernel.version": {"full": "6.1.85", "major": "6", "minor": "1", "revision": "85"},
        "kernel.selinux": {"enabled": "false"}, "kernel.kvm": {"enabled": "false"},
        "kernel.loadedmodule": {"overlay", "br_netfilter", "xt_conntrack"},
        "kernel.enabledmodule": {"overlay", "br_netfilter", "xt_conntrack", "virtio_net", "ext4", "virtio_scsi"},
        "memory.hugepages": NO_HUGEPAGES, "memory.numa": ONE_NODE, "memory.swap": NO_SWAP, "memory.nv": [],
        "system.dmiid": {"sys_vendor": "Google", "product_name": "Google Compute Engine", "bios_vendor": "Google",
                         "bios_version": "Google", "chassis_type": "1"},
        "storage.block": [disk("sda", "1")], "usb.device": [], "pci.device": [nic_pci("1af4", "1000")],
        "network.device": [{"name": "eth0", "operstate": "up", "mtu": "1500"}], "network.virtual": LO,
    },
    "azurelinux-3": {
        "cpu.model": {"vendor_id": "AMD", "family": "25", "id": "1", "hypervisor": "msvm"},  # VMBus, Microsoft Hv
        "cpu.topology": {"hardware_multithreading": "true", "socket_count": "1"}, **EMPTY_CPU,
        # "6.6.44.1-1.azl3": a fourth numeric part, so parseVersion's regex does not match: only `full`
        "kernel.version": {"full": "6.6.44.1-1.azl3"},
        "kernel.selinux": {"enabled": "false"}, "kernel.kvm": {"enabled": "false"},
        "kernel.loadedmodule": {"hv_netvsc", "hv_storvsc", "overlay", "br_netfilter"},
        "kernel.enabledmodule": {"hv_netvsc", "hv_storvsc", "overlay", "br_netfilter", "hv_vmbus", "ext4"},
        "memory.hugepages": NO_HUGEPAGES, "memory.numa": ONE_NODE, "memory.swap": NO_SWAP, "memory.nv": [],
        "system.dmiid": {"sys_vendor": "Microsoft Corporation", "product_name": "Virtual Machine",
                         "bios_vendor": "Microsoft Corporation", "chassis_type": "3",
                         "chassis_asset_tag": "7783-7084-3265-9085-8269-3286-77"},
        "storage.block": [disk("sda", "1"), disk("sdb", "1")], "usb.device": [],
        "pci.device": [nic_pci("15b3", "101a")],
        "network.device": [{"name": "enP1s1", "operstate": "up", "mtu": "1500", "speed": "50000"}],
        "network.virtual": LO,
    },
    "grace-arm64": {
        # klauspost detect_arm64.go: MIDR 0x410FD4F0 -> ARM, family 15, id 0xD4F0; hypervisor "none" on arm64
        "cpu.model": {"vendor_id": "ARM", "family": "15", "id": "54512", "hypervisor": "none"},
        "cpu.topology": {"hardware_multithreading": "false", "socket_count": "1"}, **EMPTY_CPU,  # *_stub.go
        "kernel.version": {"full": "6.8.0-1008-nvidia-64k", "major": "6", "minor": "8", "revision": "0"},
        "kernel.selinux": {"enabled": "false"}, "kernel.kvm": {"enabled": "true"},
        "kernel.loadedmodule": {"nvidia", "nvidia_uvm", "mlx5_core", "overlay"},
        "kernel.enabledmodule": {"nvidia", "nvidia_uvm", "mlx5_core", "overlay", "nvme", "arm_smmu_v3"},
        # 64k pages: 2048kB -> 2Mi, 524288kB -> 512Mi, 16777216kB -> 16Gi (resource.Quantity strings)
        "memory.hugepages": {"enabled": "true", "hugepages-2Mi": "0", "hugepages-512Mi": "16", "hugepages-16Gi": "0"},
        "memory.numa": ONE_NODE, "memory.swap": NO_SWAP, "memory.nv": [],
        "system.dmiid": {"sys_vendor": "Supermicro", "product_name": "ARS-111GL-NHR",
                         "bios_vendor": "American Megatrends International, LLC.", "chassis_type": "23"},
        "storage.block": [disk("nvme0n1", "0")], "usb.device": [], "pci.device": [nic_pci("15b3", "1021")],
        "network.device": [{"name": "enP1p1s0f0np0", "operstate": "up", "mtu": "1500", "speed": "200000"}],
        "network.virtual": LO,
    },
    "sev-snp-host": {
        "cpu.model": {"vendor_id": "AMD", "family": "25", "id": "17", "hypervisor": "none"},
        "cpu.topology": {"hardware_multithreading": "true", "socket_count": "2"},
        "cpu.coprocessor": {}, "cpu.pstate": {}, "cpu.sst": {},
        "cpu.cstate": {},  # cstate_amd64.go: acpi_idle is not intel_idle -> published empty
        # security_amd64.go sevParameterEnabled + getCgroupMiscCapacity(misc.capacity)
        "cpu.security": {"sev.enabled": "true", "sev.asids": "410", "sev.es.enabled": "true",
                         "sev.encrypted_state_ids": "99", "sev.snp.enabled": "true"},
        # rdt_linux_amd64.go; RDTMBA is not established from an AMD `mba` flag (leaf 0x80000008): left out
        "cpu.rdt": {"RDTMON": "true", "RDTCMT": "true", "RDTMBM": "true", "RDTL3CA": "true",
                    "RDTL3CA_NUM_CLOSID": "15"},
        "kernel.version": {"full": "6.8.0-45-generic", "major": "6", "minor": "8", "revision": "0"},
        "kernel.selinux": {"enabled": "false"}, "kernel.kvm": {"enabled": "true"},
        "kernel.loadedmodule": {"kvm_amd", "kvm", "ccp", "vfio_pci", "overlay"},
        "kernel.enabledmodule": {"kvm_amd", "kvm", "ccp", "vfio_pci", "overlay", "aesni-intel", "nvme"},
        "memory.hugepages": {"enabled": "true", "hugepages-1Gi": "64", "hugepages-2Mi": "0"},
        "memory.numa": {"is_numa": "true", "node_count": "2"}, "memory.swap": NO_SWAP, "memory.nv": [],
        "system.dmiid": {"sys_vendor": "Supermicro", "product_name": "AS -2025HS-TNR",
                         "bios_vendor": "American Megatrends International, LLC.", "chassis_type": "17"},
        "storage.block": [disk("nvme0n1", "0"), disk("nvme1n1", "0")], "usb.device": [],
        "pci.device": [nic_pci("15b3", "101d")],
        "network.device": [{"name": "ens1f0np0", "operstate": "up", "mtu": "1500", "speed": "100000"}],
        "network.virtual": LO,
    },
    "dmiless-guest": {
        # no DMI, no hypervisor file, clocksource tsc only: hypervisor not established -> left out (status says)
        "cpu.model": {"vendor_id": "Intel", "family": "6", "id": "106"},
        "cpu.topology": {"hardware_multithreading": "false", "socket_count": "1"}, **EMPTY_CPU,
        "kernel.version": {"full": "5.15.0-1064-kvm", "major": "5", "minor": "15", "revision": "0"},
        "kernel.selinux": {"enabled": "false"}, "kernel.kvm": {"enabled": "false"},
        # no /proc/modules (CONFIG_MODULES unset): loadedmodule absent; enabledmodule = builtins only
        "kernel.enabledmodule": {"virtio_net", "virtio_blk"},
        "memory.hugepages": {"enabled": "false"},  # no /sys/kernel/mm/hugepages: detectHugePages default
        "memory.swap": NO_SWAP, "memory.nv": [],  # no /sys/bus/node: memory.numa absent (detectNuma error)
        "storage.block": [disk("vda", "1")], "usb.device": [],
        # no /sys/bus/pci (virtio-mmio): pci.device absent; eth0 has a device link -> network.device
        "network.device": [{"name": "eth0", "operstate": "up", "mtu": "1500"}], "network.virtual": LO,
    },
}  # fmt: skip
LIBC = {
    "rhcos-4.16": "2.34", "photon-5": "2.36", "al2-eks": "2.26", "al2023-eks": "2.34", "azurelinux-3": "2.38",
    "grace-arm64": "2.39", "sev-snp-host": "2.39", "dmiless-guest": "2.35",
}  # fmt: skip
OS_RELEASE = {  # source/system/system.go: ID, VERSION_ID and splitVersion's VERSION_ID.major/.minor
    "rhcos-4.16": ("rhcos", "4.16", "4", "16"), "photon-5": ("photon", "5.0", "5", "0"),
    "al2-eks": ("amzn", "2", "2", None), "al2023-eks": ("amzn", "2023", "2023", None),
    "cos-113": ("cos", "113", "113", None), "azurelinux-3": ("azurelinux", "3.0", "3", "0"),
    "grace-arm64": ("ubuntu", "24.04", "24", "04"), "sev-snp-host": ("ubuntu", "24.04", "24", "04"),
    "dmiless-guest": ("ubuntu", "22.04", "22", "04"),
}  # fmt: skip
HOSTS = sorted(EXPECTED)
assert set(HOSTS) == set(CLOUD_HOST_NAMES)


@cache
def _round(host: str) -> ProbeRound:
    return probe_once(fixture_host(host))


def _nfd_elements(host: str) -> dict[str, Any]:
    wire = FeatureCatalog.registered().nfd_view(_round(host).features).to_nfd()
    out: dict[str, Any] = {}
    for name, f in wire["flags"].items():
        out[name] = set(f["elements"])
    for name, f in wire["attributes"].items():
        out[name] = f["elements"]
    for name, f in wire["instances"].items():
        out[name] = [e["attributes"] for e in f["elements"]]
    return {k: v for k, v in out.items() if k not in SKIP}


@pytest.mark.parametrize("host", HOSTS)
def test_exact_nfd_features(host: str) -> None:
    assert _nfd_elements(host) == EXPECTED[host]


@pytest.mark.parametrize("host", HOSTS)
def test_os_release_as_nfd(host: str) -> None:
    osr = _round(host).features.to_nfd()["attributes"]["system.osrelease"]["elements"]
    ident, vid, major, minor = OS_RELEASE[host]
    assert (osr["ID"], osr["VERSION_ID"], osr.get("VERSION_ID.major"), osr.get("VERSION_ID.minor")) == (
        ident, vid, major, minor)  # fmt: skip


@pytest.mark.parametrize("host", HOSTS)
def test_libc_and_status(host: str) -> None:
    r = _round(host)
    libc = r.features.to_nfd()["attributes"].get("system.libc")
    assert (libc["elements"]["version"] if libc else None) == LIBC.get(host)
    assert all(st.ok for st in r.statuses), [(st.name, st.error) for st in r.statuses if not st.ok]
    notes = [n for st in r.statuses for n in st.notes]
    if host == "dmiless-guest":
        assert any("cpu.model.hypervisor left out" in n for n in notes)
    if host == "cos-113":
        assert any("system.libc left out" in n for n in notes)


def _spec_for(expected: dict[str, Any]) -> str:
    """A spec whose every term holds on a node with `expected` (one term per feature)."""
    terms = []
    for feature, elements in sorted(expected.items()):
        if isinstance(elements, set):
            exprs = {e: {"op": "Exists"} for e in sorted(elements)[:3]}
        elif isinstance(elements, list):
            if not elements:
                continue
            exprs = {k: {"op": "In", "value": [v]} for k, v in elements[0].items()}
        else:
            exprs = {k: {"op": "In", "value": [v]} for k, v in elements.items()}
        terms.append({"feature": feature, "matchExpressions": exprs} if exprs else {"feature": feature})
    rules = [{"name": "all", "matchFeatures": terms}]
    return json.dumps({"version": "v1alpha1", "compatibilities": [{"rules": rules}]})


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("nfd_view", [False, True])
def test_a_spec_over_every_nfd_feature_matches_in_default_and_nfd_mode(host: str, nfd_view: bool) -> None:
    """NFD's verdict on the host: every term built from NFD's values holds, in both modes; one wrong
    value (DoesNotExist on a published attribute) fails it."""
    features = _round(host).features
    catalog = FeatureCatalog.registered()
    good = evaluate(parse_spec(_spec_for(EXPECTED[host])), features, catalog=catalog, nfd_view=nfd_view)
    assert good.compatible, json.dumps(good.to_dict())[:2000]
    bad_spec = _spec_for({"cpu.model": {}}).replace(
        '"matchFeatures": [{"feature": "cpu.model"}]',
        '"matchFeatures": [{"feature": "cpu.model", "matchExpressions": {"vendor_id": {"op": "DoesNotExist"}}}]',
    )
    assert not evaluate(parse_spec(bad_spec), features, catalog=catalog, nfd_view=nfd_view).compatible
