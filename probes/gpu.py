"""gpu probe: `gpu.device` instances and the `gpu.driver` attribute feature (not in NFD).

NFD has no GPU source; GPU facts come from NVIDIA's GFD as labels that `nfd compat validate-node`
cannot see (nfd.md §e). We find GPUs as PCI functions of a display (03xx), processing-accelerator
(1200) or co-processor (0b40) class from NVIDIA (10de), AMD (1002) or Intel (8086), then add what
the host tells about them:
- NVML (nvidia-ml-py) when probing the real root "/" and libnvidia-ml loads: product name, memory,
  compute capability, MIG mode, driver and CUDA versions, exactly as GFD gets them;
- otherwise files: /sys/module/nvidia/version or /proc/driver/nvidia/version (driver version),
  /proc/driver/nvidia/gpus/<bdf>/information (Model), amdgpu's mem_info_vram_total (bytes) and
  product_name, /sys/module/amdgpu/version (out-of-tree amdgpu only), and pci.ids for names.
  The CUDA version and compute capability are then derived (nvidia_info.py); memory of NVIDIA GPUs
  is not in any file and is left out.
NVML is never used for another root: it would describe this machine, not the tree being probed.
No GPU -> gpu.device with zero instances and no gpu.driver.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from nodecompat.features import AttributeFeature, Features, Instance
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.gpu_arch import KFD_NODES, NVML_ARCH, amd_architecture, kfd_targets, nvidia_architecture
from nodecompat.probes.hostcpu import SLASH
from nodecompat.probes.nvidia_info import (
    compute_capability,
    cuda_for_driver,
    cuda_from_nvml,
    information_model,
    parse_nvrm_version,
    split_version,
)
from nodecompat.probes.pci_ids import PciIds, host_pci_ids, marketing_name
from nodecompat.probes.probe_memo import not_replayable
from nodecompat.probes.sysfs_pci import PCI_DEVICES, PciDevice, list_pci_devices
from nodecompat.probes.textkept import TextKept

log = logging.getLogger(__name__)

GPU_VENDORS = {"10de": "nvidia", "1002": "amd", "8086": "intel"}
NV_MODULE_VERSION = "/sys/module/nvidia/version"
NV_PROC_VERSION = "/proc/driver/nvidia/version"
NV_GPUS = "/proc/driver/nvidia/gpus"
AMDGPU_VERSION = "/sys/module/amdgpu/version"
MIB = 1 << 20
# one gpu.device instance kept with a PCI device (PciDevice.derived["gpu"]: the last input's), and only for an
# input of at most this many characters (a host root's information file may be long): with sysfs_pci's 512
# devices at most ~2 MiB of input text kept
MAX_KEY_CHARS = 4096


def is_gpu(dev: PciDevice) -> bool:
    """Whether the device is a GPU (the module docstring's classes and vendors); decided once per device."""
    got = dev.derived.get("is_gpu")
    if got is None:
        c = dev.pci_class.lower()
        got = dev.vendor.lower() in GPU_VENDORS and (c.startswith("03") or c in ("1200", "0b40"))
        dev.derived["is_gpu"] = got
    return got


@dataclass
class NvmlData:
    """What NVML said: driver/CUDA versions and per-device facts keyed by PCI address."""

    driver_version: str | None = None
    cuda_version: str | None = None
    devices: dict[str, dict[str, str]] = field(default_factory=dict)


def nvml_bus_id(bus_id: str | bytes) -> str:
    """NVML's '00000000:18:00.0' -> sysfs '0000:18:00.0'."""
    s = bus_id.decode() if isinstance(bus_id, bytes) else bus_id
    domain, _, rest = s.strip().lower().partition(":")
    try:
        return f"{int(domain, 16):04x}:{rest}"
    except ValueError:
        return s.lower()


def read_nvml() -> tuple[NvmlData | None, str | None]:
    """(data, None) from NVML, or (None, why) when the library is missing or fails."""
    try:
        import pynvml
    except ImportError as exc:  # nvidia-ml-py is a dependency, but be robust
        return None, f"pynvml not importable: {exc}"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, f"NVML unavailable ({exc}); using sysfs/procfs"
    try:
        data = NvmlData()
        data.driver_version = _s(pynvml.nvmlSystemGetDriverVersion())
        try:
            data.cuda_version = cuda_from_nvml(pynvml.nvmlSystemGetCudaDriverVersion())
        except Exception:
            data.cuda_version = None
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            attrs = {"product": _s(pynvml.nvmlDeviceGetName(h))}
            attrs["memory"] = str(pynvml.nvmlDeviceGetMemoryInfo(h).total // MIB)
            try:
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
                attrs["compute_major"], attrs["compute_minor"] = str(major), str(minor)
            except Exception:
                pass
            with contextlib.suppress(Exception):  # go-nvlib GetArchitectureAsString(), as the DRA driver
                arch = NVML_ARCH.get(pynvml.nvmlDeviceGetArchitecture(h))
                if arch:
                    attrs["architecture"] = arch
            with contextlib.suppress(Exception):  # not MIG-capable
                current, _pending = pynvml.nvmlDeviceGetMigMode(h)
                attrs["mig_mode"] = "enabled" if current == pynvml.NVML_DEVICE_MIG_ENABLE else "disabled"
            data.devices[nvml_bus_id(pynvml.nvmlDeviceGetPciInfo(h).busId)] = attrs
        return data, None
    except Exception as exc:
        return None, f"NVML query failed ({exc}); using sysfs/procfs"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def nvidia_driver_version(host: HostRoot) -> str | None:
    v = host.read_line(NV_MODULE_VERSION)
    if v:
        return v
    text = host.read_text(NV_PROC_VERSION)
    return parse_nvrm_version(text) if text else None


_D = PCI_DEVICES + "/<bdf>/"


# (NVIDIA version, AMD version, an NVIDIA GPU on nvidia, an AMD GPU on amdgpu) -> gpu.driver (shared), without NVML
_DRIVERS: TextKept[AttributeFeature | None] = TextKept(16, 1024)


def _feature(attrs: dict[str, str]) -> AttributeFeature | None:
    return AttributeFeature(attrs) if attrs else None


class GpuProbe(Probe):
    name = "gpu"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    timeout = 20.0  # NVML init can take seconds on a big box
    features = (
        FeatureInfo(
            "gpu.device",
            frozenset({"instance"}),
            absent="empty (zero instances) without a GPU",
            attributes=(
                AttributeInfo(
                    "vendor", "string", _D + "vendor", nfd=False, description="nvidia, amd or intel"
                ),
                AttributeInfo("vendor_id", "hex", _D + "vendor", nfd=False),
                AttributeInfo("device_id", "hex", _D + "device", nfd=False),
                AttributeInfo("class", "hex", _D + "class", nfd=False),
                AttributeInfo("address", "string", PCI_DEVICES + "/<bdf>", nfd=False),
                AttributeInfo("numa_node", "int", _D + "numa_node", nfd=False),
                AttributeInfo(
                    "product",
                    "string",
                    f"NVML, {NV_GPUS}/<bdf>/information Model, {_D}product_name, pci.ids",
                    nfd=False,
                ),
                AttributeInfo(
                    "memory",
                    "int",
                    f"NVML, {_D}mem_info_vram_total",
                    nfd=False,
                    description="MiB; absent for NVIDIA without NVML",
                ),
                AttributeInfo("driver", "string", _D + "driver", nfd=False),
                AttributeInfo(
                    "driver_version", "version", f"NVML, {NV_MODULE_VERSION}, {AMDGPU_VERSION}", nfd=False
                ),
                AttributeInfo("compute_major", "int", "NVML, else derived from product", nfd=False),
                AttributeInfo("compute_minor", "int", "NVML, else derived from product", nfd=False),
                AttributeInfo("mig_mode", "string", "NVML", nfd=False, description="enabled/disabled"),
                AttributeInfo(
                    "compute_capability", "version", "compute_major.compute_minor", nfd=False,
                    description="NVIDIA, as the DRA driver's cudaComputeCapability (9.0)",
                ),
                AttributeInfo(
                    "architecture", "string", f"NVML, else from compute capability; AMD: {KFD_NODES}", nfd=False,
                    description="Hopper, Ampere, Ada Lovelace ... (NVIDIA DRA driver names); CDNA3, RDNA3 ...",
                ),
                AttributeInfo("gfx_target", "string", KFD_NODES + "/<n>/properties", nfd=False,
                              description="AMD LLVM target, e.g. gfx942"),
            ),
            nfd=False,
            source=PCI_DEVICES,
            description="GPUs (PCI class 03xx/1200/0b40 from NVIDIA, AMD, Intel)",
        ),
        FeatureInfo(
            "gpu.driver",
            frozenset({"attribute"}),
            absent="absent when no GPU driver version is known",
            attributes=(
                AttributeInfo("name", "string", _D + "driver", nfd=False, description="nvidia, amdgpu ..."),
                AttributeInfo(
                    "version", "version", f"NVML, {NV_MODULE_VERSION}, {NV_PROC_VERSION}", nfd=False
                ),
                AttributeInfo("major", "int", "version", nfd=False),
                AttributeInfo("minor", "int", "version", nfd=False),
                AttributeInfo("revision", "string", "version", nfd=False, description="leading zeros kept"),
                AttributeInfo("cuda_version", "version", "NVML, else derived from driver version", nfd=False),
                AttributeInfo("cuda_major", "int", "cuda_version", nfd=False),
                AttributeInfo("cuda_minor", "int", "cuda_version", nfd=False),
            ),
            nfd=False,
            source=NV_MODULE_VERSION,
            description="present only when a GPU is found",
        ),
    )

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        gpus = [d for d in list_pci_devices(host) if is_gpu(d)]
        if not gpus:
            out.features.set_instances("gpu.device", [])
            out.notes.append("no GPU found (no NVIDIA/AMD/Intel PCI display, 3D or accelerator device)")
            return out

        nvml: NvmlData | None = None
        if any(d.vendor == "10de" for d in gpus):
            if host.root == SLASH:
                not_replayable(host, "NVML")  # a library call a replay cannot ask again: run every round
                nvml, why = read_nvml()
                if why:
                    out.notes.append(why)
            else:
                out.notes.append("host root is not /: NVML not used, NVIDIA facts from sysfs/procfs")

        nv_version = (nvml.driver_version if nvml else None) or nvidia_driver_version(host)
        amd_version = host.read_line(AMDGPU_VERSION) or None
        pci_ids: list[PciIds] = []  # the host's pci.ids, once this round, when a GPU's product needs it
        kfd = kfd_targets(host) if any(d.vendor == "1002" for d in gpus) else {}
        instances = []
        for dev in gpus:
            # what this GPU's instance is made of besides the device (the files below are read every round);
            # the instance is made once per distinct input and kept with the device (PciDevice.derived), unless
            # it came from NVML or pci.ids (inputs not in this key)
            if dev.vendor == "10de":
                info_text = host.read_text(f"{NV_GPUS}/{dev.address}/information")
                key: tuple[str | None, ...] = ("gpu", nv_version, info_text)
            elif dev.vendor == "1002":
                vram = host.read_line(f"{PCI_DEVICES}/{dev.address}/mem_info_vram_total")
                pname = host.read_line(f"{PCI_DEVICES}/{dev.address}/product_name")
                key = ("gpu", amd_version, vram, pname, kfd.get(dev.address))
            else:
                key = ("gpu",)
            kept = None if nvml else dev.derived.get("gpu")
            inst = kept[1] if kept is not None and kept[0] == key else None
            if inst is None:
                attrs, keep = self._attrs(host, dev, key, nvml, kfd, pci_ids)
                inst = Instance(attrs)
                if keep and sum(len(v) for v in key if v) <= MAX_KEY_CHARS:
                    dev.derived["gpu"] = (key, inst)  # one object: a thread never pairs one key with another's
            instances.append(inst)
        out.features.put_instances("gpu.device", instances)

        if nvml is None:  # from the versions read and which drivers the GPUs are bound to: once per distinct input
            nv_bound = any(d.vendor == "10de" and d.driver == "nvidia" for d in gpus)
            amd_bound = any(d.vendor == "1002" and d.driver == "amdgpu" for d in gpus)
            driver_feature = _DRIVERS.get((nv_version, amd_version, str(nv_bound), str(amd_bound)),
                                          lambda: _feature(self._driver(gpus, nv_version, amd_version, None)))
        else:
            driver_feature = _feature(self._driver(gpus, nv_version, amd_version, nvml))
        if driver_feature is not None:
            out.features.attributes["gpu.driver"] = driver_feature  # str values: shared, not changed
        else:
            out.notes.append("GPU driver version unknown: gpu.driver left out")
        return out

    @classmethod
    def _attrs(cls, host: HostRoot, dev: PciDevice, key: tuple[str | None, ...], nvml: NvmlData | None,
               kfd: dict[str, str], pci_ids: list[PciIds]) -> tuple[dict[str, str], bool]:
        """(the gpu.device attributes of `dev`, whether they follow from `dev` and `key` alone: False when
        NVML or pci.ids gave some). `key`: discover's, holding the files read for this GPU."""
        attrs = cls._base(dev)
        keep = nvml is None
        if dev.vendor == "10de":
            nv_version, info_text = key[1], key[2]
            if nv_version and dev.driver == "nvidia":
                attrs["driver_version"] = nv_version
            if info_text:
                model = information_model(info_text)
                if model:
                    attrs["product"] = model
            if nvml and dev.address in nvml.devices:
                attrs.update(nvml.devices[dev.address])
        elif dev.vendor == "1002":
            amd_version, vram, pname = key[1], key[2], key[3]
            if amd_version and dev.driver == "amdgpu":
                attrs["driver_version"] = amd_version
            if vram and vram.isdigit():
                attrs["memory"] = str(int(vram) // MIB)
            if pname:
                attrs["product"] = pname
        if "product" not in attrs:
            keep = False  # pci.ids: its own input
            if not pci_ids:
                pci_ids.append(host_pci_ids(host))
            name = pci_ids[0].name(dev.vendor, dev.device, dev.nfd["subsystem_vendor"],
                                           dev.nfd["subsystem_device"])
            if name.subsystem or name.device:
                attrs["product"] = marketing_name(name.subsystem or name.device or "")
        if dev.vendor == "10de" and "compute_major" not in attrs and "product" in attrs:
            cc = compute_capability(attrs["product"])
            if cc:
                attrs["compute_major"], attrs["compute_minor"] = str(cc[0]), str(cc[1])
        cls._architecture(dev, attrs, kfd)
        return attrs, keep

    @staticmethod
    def _architecture(dev: PciDevice, attrs: dict[str, str], kfd: dict[str, str]) -> None:
        """compute_capability / architecture (NVIDIA), gfx_target / architecture (AMD); see gpu_arch.py."""
        if dev.vendor == "10de" and "compute_major" in attrs:
            major, minor = int(attrs["compute_major"]), int(attrs["compute_minor"])
            attrs["compute_capability"] = f"{major}.{minor}"
            arch = attrs.get("architecture") or nvidia_architecture(major, minor)
            if arch:
                attrs["architecture"] = arch
        elif dev.vendor == "1002":
            target = kfd.get(dev.address)
            if target:
                attrs["gfx_target"] = target
                arch = amd_architecture(target)
                if arch:
                    attrs["architecture"] = arch

    @staticmethod
    def _base(dev: PciDevice) -> dict[str, str]:
        attrs = {
            "vendor": GPU_VENDORS[dev.vendor.lower()],
            "vendor_id": dev.vendor,
            "device_id": dev.device,
            "class": dev.pci_class,
            "address": dev.address,
        }
        if dev.numa_node is not None:
            attrs["numa_node"] = dev.numa_node
        if dev.driver is not None:
            attrs["driver"] = dev.driver
        return attrs

    @staticmethod
    def _driver(
        gpus: list[PciDevice], nv_version: str | None, amd_version: str | None, nvml: NvmlData | None
    ) -> dict[str, str]:
        """gpu.driver for the first GPU vendor (NVIDIA, then AMD) whose driver version is known."""
        if nv_version and any(d.vendor == "10de" and d.driver == "nvidia" for d in gpus):
            out = {"name": "nvidia", "version": nv_version, **split_version(nv_version)}
            cuda = (nvml.cuda_version if nvml else None) or cuda_for_driver(nv_version)
            if cuda:
                major, _, minor = cuda.partition(".")
                out.update({"cuda_version": cuda, "cuda_major": major, "cuda_minor": minor})
            return out
        if amd_version and any(d.vendor == "1002" and d.driver == "amdgpu" for d in gpus):
            return {"name": "amdgpu", "version": amd_version, **split_version(amd_version)}
        return {}
