"""All built-in probes through the real entry-point registry: they load, run everywhere, and only
produce features and attributes they declare (the declarations drive docs/features.md and lint)."""

from __future__ import annotations

import re

import pytest
from support_hosts import CLOUD_HOST_NAMES, HOST_NAMES, REAL, fixture_host

from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import FeatureInfo, Probe
from nodecompat.probes.registry import load_probes
from nodecompat.probes.runner import probe_once

BUILTIN = {"pci", "gpu", "nic", "kernel", "hugepages", "cpu", "memory", "system", "local"}


def test_all_builtins_load():
    probes, errors = load_probes()
    assert errors == []
    assert {p.name for p in probes} >= BUILTIN


@pytest.mark.parametrize("host", ["/", *HOST_NAMES, *CLOUD_HOST_NAMES])
def test_every_probe_succeeds(host):
    root = REAL if host == "/" else fixture_host(host)
    rnd = probe_once(root, only=BUILTIN)
    assert [(s.name, s.ok, s.error) for s in rnd.statuses] == [(n, True, "") for n in sorted(BUILTIN)]


def test_probes_survive_an_empty_root(tmp_path):
    rnd = probe_once(HostRoot(tmp_path), only=BUILTIN)
    assert all(s.ok for s in rnd.statuses), [(s.name, s.error) for s in rnd.statuses if not s.ok]


def _declared(decl: FeatureInfo, attr: str) -> bool:
    names = decl.attribute_names()
    if names is None:
        return True
    for n in names:
        pattern = "^" + re.sub(r"<[^>]+>", ".+", re.escape(n).replace(r"\<", "<").replace(r"\>", ">")) + "$"
        if re.match(pattern, attr):
            return True
    return False


@pytest.mark.parametrize("host", ["/", *HOST_NAMES, *CLOUD_HOST_NAMES])
def test_output_matches_declarations(host):
    root = REAL if host == "/" else fixture_host(host)
    probes, _ = load_probes(BUILTIN)
    for probe in probes:
        assert isinstance(probe, Probe)
        decls = {f.name: f for f in probe.features}
        out = probe.discover(root).features
        for kind, section in (
            ("flag", out.flags),
            ("attribute", out.attributes),
            ("instance", out.instances),
        ):
            for name in section:
                assert name in decls, f"{probe.name} produced undeclared {name}"
                assert kind in decls[name].kinds, f"{name}: {kind} not declared"
        for name, feat in out.attributes.items():
            for attr in feat.elements:
                assert _declared(decls[name], attr), f"{name}.{attr} not declared"
        for name, inst in out.instances.items():
            for one in inst.elements:
                for attr in one.attributes:
                    assert _declared(decls[name], attr), f"{name}.{attr} not declared"
