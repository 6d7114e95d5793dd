"""The NFD-or-addition marker of every probe declaration, checked against NFD's own list.

NFD_PUBLISHES is transcribed from NFD's Go source, kubernetes-sigs/node-feature-discovery master at
76e6cc8c (the file that sets each name is cited). A declaration marked `nfd=True` (the default) that
is not in it fails here: mark a nodecompat addition `nfd=False`, or, for a new NFD source, add NFD's
names with the file they come from.
"""

from __future__ import annotations

import pytest
from support_hosts import CLOUD_HOST_NAMES, HOST_NAMES, REAL, fixture_host

from nodecompat.features import Features
from nodecompat.probes.base import AttributeInfo, FeatureInfo
from nodecompat.probes.catalog import FeatureCatalog
from nodecompat.probes.registry import load_probes

OPEN = None  # any element name (flag features, open attribute sets)

# feature -> (NFD's attribute names or OPEN, NFD source file that publishes them)
NFD_PUBLISHES: dict[str, tuple[frozenset[str] | None, str]] = {
    # flags from getCpuidFlags(); attribute AVX10_VERSION in cpuid_amd64.go getCpuidAttributes()
    "cpu.cpuid": (OPEN, "source/cpu/cpu.go, source/cpu/cpuid_amd64.go"),
    "cpu.model": (frozenset({"vendor_id", "family", "id", "hypervisor"}), "source/cpu/cpu.go getCPUModel"),
    "cpu.cstate": (frozenset({"enabled"}), "source/cpu/cstate_amd64.go"),
    "cpu.pstate": (frozenset({"status", "turbo", "scaling_governor"}), "source/cpu/pstate_amd64.go"),
    "cpu.rdt": (
        frozenset({"RDTMON", "RDTCMT", "RDTMBM", "RDTL3CA", "RDTL3CA_NUM_CLOSID", "RDTL2CA", "RDTMBA"}),
        "source/cpu/rdt_linux_amd64.go",
    ),
    "cpu.security": (
        frozenset({
            "sgx.enabled", "sgx.epc", "tdx.enabled", "tdx.total_keys", "tdx.protected", "sev.enabled",
            "sev.asids", "sev.es.enabled", "sev.encrypted_state_ids", "sev.snp.enabled", "se.enabled",
        }),
        "source/cpu/security_amd64.go, source/cpu/security_s390x.go",
    ),
    "cpu.sst": (frozenset({"bf.enabled"}), "source/cpu/power_amd64.go"),
    "cpu.topology": (frozenset({"hardware_multithreading", "socket_count"}), "source/cpu/cpu.go discoverTopology"),
    "cpu.coprocessor": (frozenset({"nx_gzip"}), "source/cpu/coprocessor_ppc64le.go"),
    "kernel.config": (OPEN, "source/kernel/kconfig.go"),
    "kernel.loadedmodule": (OPEN, "source/kernel/modules.go"),
    "kernel.enabledmodule": (OPEN, "source/kernel/modules.go"),
    "kernel.selinux": (frozenset({"enabled"}), "source/kernel/kernel.go, selinux.go"),
    "kernel.version": (frozenset({"full", "major", "minor", "revision"}), "source/kernel/version.go parseVersion"),
    "kernel.kvm": (frozenset({"enabled"}), "source/kernel/kernel.go, kvm.go"),
    "memory.numa": (frozenset({"is_numa", "node_count"}), "source/memory/memory.go detectNuma"),
    "memory.swap": (frozenset({"enabled"}), "source/memory/memory.go detectSwap"),
    "memory.nv": (frozenset({"name", "devtype", "mode"}), "source/memory/memory.go readNdDeviceInfo"),
    # corev1.ResourceHugePagesPrefix + quantity: hugepages-2Mi, hugepages-1Gi
    "memory.hugepages": (frozenset({"enabled", "hugepages-<size>"}), "source/memory/memory.go detectHugePages"),
    "network.device": (
        frozenset({"name", "operstate", "speed", "sriov_numvfs", "sriov_totalvfs", "mtu"}),
        "source/network/network.go devIfaceAttrs",
    ),
    "network.virtual": (
        frozenset({"name", "operstate", "speed", "mtu"}), "source/network/network.go virtualIfaceAttrs"
    ),
    "pci.device": (
        frozenset({
            "class", "vendor", "device", "subsystem_vendor", "subsystem_device",
            "sriov_totalvfs", "iommu_group/type", "iommu/intel-iommu/version",
        }),
        "source/pci/utils.go mandatoryDevAttrs, optionalDevAttrs",
    ),
    "usb.device": (frozenset({"class", "vendor", "device", "serial"}), "source/usb/utils.go devAttrs"),
    "storage.block": (
        frozenset({"name", "dax", "rotational", "nr_zones", "zoned"}),
        "source/storage/storage.go queueAttrs",
    ),
    "system.osrelease": (OPEN, "source/system/system.go (os-release keys, VERSION_ID.major/.minor)"),
    "system.dmiid": (
        frozenset({
            "bios_date", "bios_vendor", "bios_version", "board_asset_tag", "board_name", "board_vendor",
            "board_version", "chassis_asset_tag", "chassis_type", "chassis_vendor", "chassis_version",
            "product_family", "product_name", "product_sku", "product_version", "sys_vendor",
        }),
        "source/system/system.go dmiIDAttributeNames",
    ),
    "system.name": (frozenset({"nodename"}), "source/system/system.go"),
    "local.feature": (OPEN, "source/local/local.go RawFeature"),
    "local.label": (OPEN, "source/local/local.go LabelFeature"),
}


def _declared() -> list[FeatureInfo]:
    probes, errors = load_probes()
    assert not errors, errors
    return [f for p in probes for f in p.features]


def test_every_feature_marked_nfd_is_one_nfd_publishes() -> None:
    wrong = [f.name for f in _declared() if f.nfd and f.name not in NFD_PUBLISHES]
    assert not wrong, f"marked nfd=True but NFD publishes no such feature (mark nfd=False): {wrong}"


@pytest.mark.parametrize("feature", sorted(NFD_PUBLISHES))
def test_attributes_marked_nfd_are_nfds_and_nfds_are_declared(feature: str) -> None:
    info = next((f for f in _declared() if f.name == feature), None)
    if info is None:
        pytest.skip(f"no probe provides {feature} yet")
    names, where = NFD_PUBLISHES[feature]
    assert info.nfd, f"{feature} is NFD's ({where}) but marked as an addition"
    if names is None:
        assert info.open_names(), f"NFD's {feature} has open names ({where}); the declaration closes them"
        return
    assert info.attributes is not None, f"{feature}: NFD's names are {sorted(names)} ({where})"
    marked = {a.name for a in info.attributes if a.nfd}
    assert marked == names, (
        f"{feature}: NFD publishes {sorted(names)} ({where}); declared as NFD's: {sorted(marked)}"
    )


def test_the_known_additions_are_marked() -> None:
    """The additions issue 9 names: pci.device address/driver/numa_node, hugepage totals, gpu.*, memory.size."""
    cat = FeatureCatalog(_declared())
    for feature, attr in [
        ("pci.device", "address"), ("pci.device", "driver"), ("pci.device", "numa_node"),
        ("network.device", "driver"), ("network.device", "address"), ("network.device", "numa_node"),
        ("memory.hugepages", "hugepages-2Mi.total"), ("memory.hugepages", "hugepages-1Gi.free"),
    ]:
        assert cat.provides(feature, attr) and not cat.nfd_publishes(feature, attr), (feature, attr)
    for feature in ("gpu.device", "gpu.driver", "memory.size", "memory.hugepages.node"):
        assert cat.provides(feature) and not cat.nfd_publishes(feature), feature
    # and NFD's own names stay NFD's
    assert cat.nfd_publishes("memory.hugepages", "hugepages-2Mi")
    assert cat.nfd_publishes("pci.device", "vendor")
    assert cat.nfd_publishes("kernel.config", "NO_HZ")


def test_pattern_resolution_prefers_the_most_literal_declaration() -> None:
    info = FeatureInfo(
        "memory.hugepages",
        frozenset({"attribute"}),
        attributes=(AttributeInfo("hugepages-<size>"), AttributeInfo("hugepages-<size>.total", nfd=False)),
    )
    assert info.nfd_publishes("hugepages-2Mi")
    assert not info.nfd_publishes("hugepages-2Mi.total")
    assert info.provides("hugepages-1Gi") and not info.provides("hugepage-1Gi")
    assert info.nfd_publishes("undeclared")  # not declared as an addition: NFD's (e.g. from an NFD snapshot)


def test_nfd_view_hides_exactly_the_additions() -> None:
    cat = FeatureCatalog(_declared())
    f = Features()
    f.add_instance("pci.device", {"class": "0302", "vendor": "10de", "address": "0000:17:00.0", "driver": "nvidia"})
    f.add_attributes("memory.hugepages", {"enabled": "true", "hugepages-2Mi": "8", "hugepages-2Mi.total": "8"})
    f.add_attributes("memory.size", {"total_bytes": "1024"})
    f.add_instance("gpu.device", {"vendor": "nvidia"})
    f.add_instance("usb.device", {"class": "0e", "vendor": "046d"})  # from an NFD snapshot, say
    f.add_flags("cpu.cpuid", ["AVX2"])
    view = cat.nfd_view(f)
    assert view.to_nfd() == {
        "flags": {"cpu.cpuid": {"elements": {"AVX2": {}}}},
        "attributes": {"memory.hugepages": {"elements": {"enabled": "true", "hugepages-2Mi": "8"}}},
        "instances": {
            "pci.device": {"elements": [{"attributes": {"class": "0302", "vendor": "10de"}}]},
            "usb.device": {"elements": [{"attributes": {"class": "0e", "vendor": "046d"}}]},
        },
    }
    assert "address" in f.instances["pci.device"].elements[0].attributes  # the input is untouched
    assert cat.nfd_view(f) is view  # one filtering per probe round


def test_suggestions() -> None:
    cat = FeatureCatalog(_declared())
    assert cat.suggest("kernel.versoin") == "kernel.version"
    assert cat.suggest("pci.device", "adress") == "address"
    assert cat.suggest("pci.device", "adress", nfd_only=True) == ""
    assert cat.suggest("no.such.thing") == ""
    assert not cat.provides("kernel.versoin")
    assert not cat.provides("kernel.version", "mjaor") and cat.provides("kernel.version", "major")


@pytest.mark.parametrize("host_name", [*HOST_NAMES, *CLOUD_HOST_NAMES, "/"])
def test_every_element_a_probe_reports_is_declared(host_name: str) -> None:
    """Otherwise the engine would call a reported name one "no probe provides" (issue 9 item 5)."""
    from nodecompat.probes.runner import probe_once

    host = REAL if host_name == "/" else fixture_host(host_name)
    f = probe_once(host).features
    cat = FeatureCatalog(_declared())
    undeclared = sorted(
        {f"{n}.{k}" for n, a in f.attributes.items() for k in a.elements if not cat.provides(n, k)}
        | {f"{n}.{k}" for n, i in f.instances.items() for x in i.elements for k in x.attributes
           if not cat.provides(n, k)}
        | {n for n in f.names() if not cat.provides(n)}
    )
    assert not undeclared, f"{host_name}: reported but not declared: {undeclared}"
