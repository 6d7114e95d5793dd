"""Shared helpers for the probe tests: fixture host trees and running one probe on a root."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import Probe, ProbeOutput

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hosts"
HOST_NAMES = ("h100-server", "amd-mi300", "plain-vm")
# tests/fixtures/hosts/cloud_hosts.py: cloud OS images, an arm64 server, a confidential-computing host, a DMI-less guest
CLOUD_HOST_NAMES = ("rhcos-4.16", "photon-5", "al2-eks", "al2023-eks", "cos-113", "azurelinux-3", "grace-arm64",
                    "sev-snp-host", "dmiless-guest")  # fmt: skip
REAL = HostRoot(Path("/"))


def fixture_host(name: str, features_d: str | None = None) -> HostRoot:
    root = FIXTURES / name
    assert root.is_dir(), f"missing fixture tree {root}"
    return HostRoot(root) if features_d is None else HostRoot(root, features_d)


def copy_fixture(name: str, dest: Path) -> HostRoot:
    """A private, writable copy of a fixture tree (symlinks kept as links) for mutation tests."""
    target = dest / name
    shutil.copytree(FIXTURES / name, target, symlinks=True)
    return HostRoot(target)


def run(probe: Probe, host: HostRoot) -> tuple[dict[str, Any], ProbeOutput]:
    """Run a probe and return (NFD wire dict, raw output)."""
    out = probe.discover(host)
    return out.features.to_nfd(), out


def attrs(wire: dict[str, Any], name: str) -> dict[str, str] | None:
    feat = wire["attributes"].get(name)
    return None if feat is None else feat["elements"]


def flags(wire: dict[str, Any], name: str) -> set[str] | None:
    feat = wire["flags"].get(name)
    return None if feat is None else set(feat["elements"])


def instances(wire: dict[str, Any], name: str) -> list[dict[str, str]] | None:
    feat = wire["instances"].get(name)
    return None if feat is None else [e["attributes"] for e in feat["elements"]]


def make_unreadable(host: HostRoot, host_path: str) -> None:
    """Make a host file unreadable even for root: replace it with a directory (read -> EISDIR)."""
    p = host.path(host_path)
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)
    p.mkdir(parents=True)
