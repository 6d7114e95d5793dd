"""The probe registry's own scan of the `nodecompat.probes` entry-point group (probes/registry.py) finds
what importlib.metadata.entry_points(group=...) finds, in the same order, for built-ins and third-party
distributions alike, and hands anything it does not reproduce to importlib.metadata.

Rules followed (CPython 3.11 Lib/importlib/metadata/__init__.py): FastPath/Lookup list `*.dist-info` and
`*.egg-info` per sys.path entry, grouped by normalized name; `_unique` keeps the first distribution of
a name; Sectioned.read skips blank and `#` lines; EntryPoint.pattern and load() resolve `module:attr`.
"""

from __future__ import annotations

import sys
import textwrap
import zipfile
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from nodecompat.probes import registry
from nodecompat.probes.registry import ENTRY_POINT_GROUP, PluginEntry, load_probes, scan_entry_points

PLUGIN = """
from nodecompat.probes.base import FeatureInfo, Probe, ProbeOutput

class RackProbe(Probe):
    name = "rack"
    features = (FeatureInfo("rack.location", frozenset({"attribute"})),)

    def discover(self, host):
        out = ProbeOutput()
        out.features.add_attributes("rack.location", {"row": "7"})
        return out

class Outer:
    class Inner(RackProbe):
        name = "rack-inner"
"""


def _dist(site: Path, dirname: str, entry_points_txt: str | None) -> None:
    d = site / dirname
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dirname.partition('-')[0]}\nVersion: 1\n")
    if entry_points_txt is not None:
        (d / "entry_points.txt").write_text(textwrap.dedent(entry_points_txt))


def _pairs(eps: object) -> list[tuple[str, str, str]]:
    return [(e.name, e.value, e.group) for e in eps]  # type: ignore[attr-defined]


@pytest.fixture
def sites(tmp_path: Path) -> list[str]:
    """Two site directories and a missing one: duplicates, comments, other groups, egg-info (as a
    directory and as a file), a distribution without entry points."""
    a, b = tmp_path / "a", tmp_path / "b"
    _dist(a, "acme_probes-1.0.dist-info", """
        # a comment
        [console_scripts]
        acme = acme.cli:main

        [nodecompat.probes]
        rack = acme_rack:RackProbe
          inner   =   acme_rack:Outer.Inner
        [other.group]
        x = y
    """)
    _dist(a, "Zed.Tools-2.0.egg-info", "[nodecompat.probes]\nzed = zed_probe:Zed\n")
    _dist(a, "plain-3.0.dist-info", None)
    (a / "legacy-1.0.egg-info").write_text("Metadata-Version: 1.0\nName: legacy\n")  # a file, not a dir
    _dist(b, "ACME.probes-0.9.dist-info", "[nodecompat.probes]\nshadowed = old:Probe\n")  # same name: skipped
    _dist(b, "later-1.0.dist-info", "[nodecompat.probes]\nrack = later:Rack\n")
    return [str(a), str(b), str(tmp_path / "missing")]


def test_this_environment_matches_importlib_metadata():
    found = scan_entry_points(ENTRY_POINT_GROUP)
    assert found is not None, "the test environment is the plain case the scan reproduces"
    assert _pairs(found) == _pairs(entry_points(group=ENTRY_POINT_GROUP))
    assert {"cpu", "kernel", "pci", "memory"} <= {e.name for e in found}


def test_constructed_sites_match_importlib_metadata(sites, monkeypatch):
    monkeypatch.setattr(sys, "path", sites)
    found = scan_entry_points(ENTRY_POINT_GROUP)
    expected = _pairs(entry_points(group=ENTRY_POINT_GROUP))
    assert found is not None and _pairs(found) == expected
    # the first acme_probes wins (directory order within a site, site order across them)
    assert sorted(e.name for e in found) == ["inner", "rack", "rack", "zed"]
    assert [e.value for e in found][-1] == "later:Rack"


@pytest.mark.parametrize("case", ["zip", "egg", "nameless", "malformed"])
def test_cases_it_does_not_reproduce_go_to_importlib_metadata(tmp_path, case):
    site = tmp_path / "site"
    site.mkdir()
    if case == "zip":
        path = tmp_path / "bundle.zip"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("zipped-1.0.dist-info/entry_points.txt", "[nodecompat.probes]\nz = z:Z\n")
        paths = [str(site), str(path)]
    elif case == "egg":
        (tmp_path / "old.egg" / "EGG-INFO").mkdir(parents=True)
        paths = [str(tmp_path / "old.egg")]
    elif case == "nameless":
        _dist(site, "-1.0.dist-info", "[nodecompat.probes]\nn = n:N\n")
        paths = [str(site)]
    else:
        _dist(site, "bad-1.0.dist-info", "[nodecompat.probes]\nno equals sign here\n")
        paths = [str(site)]
    assert scan_entry_points(ENTRY_POINT_GROUP, paths) is None


def test_another_distribution_finder_goes_to_importlib_metadata(monkeypatch):
    class Finder:
        @staticmethod
        def find_distributions(context: object = None) -> list[object]:
            return []

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, Finder])
    assert scan_entry_points(ENTRY_POINT_GROUP) is None


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch) -> Iterator[Path]:
    site = tmp_path / "plugins"
    site.mkdir()
    (site / "acme_rack.py").write_text(PLUGIN)
    _dist(site, "acme_rack-0.1.dist-info", """
        [nodecompat.probes]
        rack = acme_rack:RackProbe
        rack-inner = acme_rack:Outer.Inner
        broken = acme_rack:Missing
        garbled = not a value!
    """)
    monkeypatch.syspath_prepend(str(site))
    registry._entry_points.cache_clear()
    yield site
    registry._entry_points.cache_clear()
    sys.modules.pop("acme_rack", None)


def test_a_third_party_plugin_loads_beside_the_builtins(plugin_site):
    probes, errors = load_probes()
    names = {p.name for p in probes}
    assert {"rack", "rack-inner", "cpu", "kernel"} <= names
    by_name = {e.name: e.error for e in errors}
    assert set(by_name) == {"broken", "garbled"}
    assert "acme_rack:Missing" in by_name["broken"] and "Missing" in by_name["broken"]
    assert "'not a value!' is not module[:attribute]" in by_name["garbled"]
    assert registry.probe_names() == sorted({*names, "broken", "garbled"})


def test_plugin_entry_load_follows_the_attribute_path(plugin_site):
    entry = PluginEntry("inner", "acme_rack:Outer.Inner", ENTRY_POINT_GROUP)
    assert entry.load()().name == "rack-inner"
    assert PluginEntry("mod", "acme_rack", ENTRY_POINT_GROUP).load() is sys.modules["acme_rack"]


@pytest.mark.parametrize(("value", "name"), [
    ("acme_rack:RackProbe", "rack"),
    ("acme_rack : RackProbe", "rack"),  # spaces and extras: importlib.metadata's pattern decides
    ("acme_rack:Outer.Inner [extra]", "rack-inner"),
])
def test_entry_values_resolve_as_importlib_metadata_resolves_them(plugin_site, value, name):
    assert PluginEntry("x", value, ENTRY_POINT_GROUP).load()().name == name


@pytest.mark.parametrize("value", ["acme_rack:", "acme_rack:Rack Probe", ":RackProbe", "acme-rack:RackProbe"])
def test_values_importlib_metadata_would_not_resolve_are_refused(value):
    with pytest.raises(ValueError, match="is not module"):
        PluginEntry("x", value, ENTRY_POINT_GROUP).load()


def test_each_round_gets_new_probes_without_loading_the_entry_points_again(plugin_site, monkeypatch):
    """The probe list is loaded once per process (issue 11): a later round makes new probe instances from
    the classes already loaded (no import, no attribute walk); a plugin module replaced in sys.modules
    is loaded afresh, and a failed load is tried again."""
    first, _ = load_probes()
    imports: list[str] = []
    real = registry.import_module
    monkeypatch.setattr(registry, "import_module", lambda name: imports.append(name) or real(name))
    second, errors = load_probes()
    assert imports == ["acme_rack"]  # only `broken` (acme_rack:Missing) is tried again
    assert {e.name for e in errors} == {"broken", "garbled"}
    by_name = {p.name: p for p in first}
    assert all(type(p) is type(by_name[p.name]) and p is not by_name[p.name] for p in second)
    sys.modules.pop("acme_rack")
    imports.clear()
    third, _ = load_probes()
    assert "acme_rack" in imports
    rack = next(p for p in third if p.name == "rack")
    assert type(rack) is not type(by_name["rack"]) and type(rack).__module__ == "acme_rack"
