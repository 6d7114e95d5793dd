"""Finding probes: the entry-point group `nodecompat.probes`, for built-ins and third parties alike.

One path for every probe (as pytest/pluggy do) means the plugin path is always exercised. A plugin
that fails to load does not stop the others: it is returned as a load error, which the runner turns
into a failed probe status.

The group is read with a small scan of sys.path (hand-written; fast start, issue 11): importing
importlib.metadata (email, zipfile, csv, ...) and its distribution scan cost ~15 ms of the daemon's
start, more than a probe round. The scan follows importlib.metadata's own rules for the common case —
every sys.path entry a directory (or missing), distributions as `*.dist-info`/`*.egg-info` entries in
directory order, the first distribution of a (normalized) name wins, `entry_points.txt` sections and
`name = value` lines as its Sectioned parser reads them — so built-ins and third-party plugins load
exactly as `importlib.metadata.entry_points(group=...)` would list them (tests/test_probe_registry.py
compares the two). Wherever that case does not hold (a zip or egg on sys.path, a meta-path finder
other than the standard PathFinder that can find distributions, a name importlib.metadata would read
from METADATA), importlib.metadata itself is used.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import import_module
from importlib.machinery import PathFinder
from typing import Any, Protocol

from nodecompat.probes.base import FeatureInfo, Probe

ENTRY_POINT_GROUP = "nodecompat.probes"
_DIST_SUFFIXES = (".dist-info", ".egg-info")
_SEPARATORS = re.compile(r"[-_.]+")


class EntryPointLike(Protocol):
    name: str
    value: str
    group: str

    def load(self) -> Any: ...


@dataclass(frozen=True)
class PluginEntry:
    """One entry point of a distribution (importlib.metadata.EntryPoint's fields and load())."""

    name: str
    value: str
    group: str

    def load(self) -> Any:
        """Import the module and follow the attribute path, as importlib.metadata.EntryPoint.load does;
        ValueError for a value that is not `module[:attr[.attr...]]`."""
        module, colon, attrs = self.value.partition(":")
        plain = all(p.isidentifier() for p in module.split(".")) and (
            not colon or all(p.isidentifier() for p in attrs.split(".")))
        if not plain:
            match = _value_pattern().match(self.value)  # spaces, extras, ...: the pattern itself
            if match is None:
                raise ValueError(f"{self.value!r} is not module[:attribute]")
            module, attrs = match.group("module"), match.group("attr") or ""
        obj: Any = import_module(module)
        for attr in filter(None, attrs.split(".")):
            obj = getattr(obj, attr)
        return obj


@dataclass(frozen=True)
class LoadError:
    name: str
    error: str


@functools.cache
def _value_pattern() -> re.Pattern[str]:
    """importlib.metadata.EntryPoint.pattern: module[:attr.attr][ [extras]] (compiled when first needed:
    the plain `package.module:Class` values of every installed probe do without it)."""
    return re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")


def _normalize(name: str) -> str:
    """importlib.metadata's Prepared.normalize: PEP 503 plus dashes as underscores."""
    return _SEPARATORS.sub("_", name).lower()


def _section_entries(text: str, group: str) -> list[PluginEntry] | None:
    """The `group` section's entries of an entry_points.txt, as importlib.metadata's Sectioned reads it;
    None when a line of that section has no `=` (importlib.metadata raises there)."""
    out: list[PluginEntry] = []
    section: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
            continue
        if section != group:
            continue
        name, eq, value = line.partition("=")
        if not eq:
            return None
        out.append(PluginEntry(name.strip(), value.strip(), group))
    return out


def scan_entry_points(group: str, paths: Iterable[str] | None = None) -> list[PluginEntry] | None:
    """The group's entry points in importlib.metadata's order (sys.path order, then directory order),
    or None when the environment is outside the case this scan reproduces (then ask importlib.metadata)."""
    if paths is None:
        finders = [f for f in sys.meta_path if getattr(f, "find_distributions", None) is not None]
        if finders != [PathFinder]:
            return None
        paths = sys.path
    seen: set[str] = set()
    out: list[PluginEntry] = []
    group_bytes = group.encode()
    for root in paths:
        if os.path.basename(root).lower().endswith(".egg"):
            return None  # a legacy egg: importlib.metadata reads its EGG-INFO
        try:
            children = os.listdir(root or ".")
        except NotADirectoryError:
            return None  # a zip on sys.path
        except OSError:
            continue  # missing or unreadable: importlib.metadata finds nothing there either
        by_name: dict[str, list[str]] = {}
        for child in children:
            low = child.lower()
            if low.endswith(_DIST_SUFFIXES):
                by_name.setdefault(_normalize(low.rpartition(".")[0].partition("-")[0]), []).append(child)
        for entries in by_name.values():
            for child in entries:
                stem, ext = os.path.splitext(child)
                name = stem.partition("-")[0]
                if ext not in _DIST_SUFFIXES or not name:
                    return None  # importlib.metadata would take the name from METADATA
                key = _normalize(name)
                if key in seen:
                    continue
                seen.add(key)
                try:
                    with open(os.path.join(root, child, "entry_points.txt"), "rb") as f:
                        data = f.read()
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
                    continue
                if group_bytes not in data:
                    continue
                found = _section_entries(data.decode("utf-8"), group)
                if found is None:
                    return None
                out.extend(found)
    return out


@functools.cache
def _entry_points() -> tuple[EntryPointLike, ...]:
    """The group's entry points, sorted by name: scanned once per process (the scan of every
    installed distribution's metadata costs more than a probe round)."""
    found: list[Any] | None = scan_entry_points(ENTRY_POINT_GROUP)
    if not found:  # not the plain case (or nothing found): importlib.metadata decides
        from importlib.metadata import entry_points

        found = list(entry_points(group=ENTRY_POINT_GROUP))
    return tuple(sorted(found, key=lambda e: e.name))


_loaded: dict[tuple[str, str, str], tuple[Any, Any]] = {}  # entry -> (its module, what it loaded)


def _load(ep: EntryPointLike) -> Any:
    """ep.load(), kept per entry point while its module is the one in sys.modules (a round does not
    import and walk to every probe class again; a module replaced or removed is loaded afresh). A
    failure is not kept: a plugin whose import failed is tried again on the next round."""
    key = (ep.name, ep.value, ep.group)
    module = ep.value.partition(":")[0].strip()
    hit = _loaded.get(key)
    if hit is not None and sys.modules.get(module) is hit[0]:
        return hit[1]
    factory = ep.load()
    loaded = sys.modules.get(module)
    if loaded is not None:
        _loaded[key] = (loaded, factory)
    return factory


# The last full load_probes() (only=None) that loaded every entry point: [the _entry_points() tuple it read,
# ((entry point, its module's name, the module, what it loaded), ...) in load order, names already
# de-duplicated]. While _entry_points() answers the same tuple, the next full load only checks each
# module is still the one in sys.modules and calls the factories (issue 11: building keys, splitting
# values and looking up the cache cost ~1.3 us a probe, a tenth of a first round's runner part).
_plan: list[Any] = []
_probe_types: set[type] = set()  # classes whose instances were found to be Probes (isinstance once a class)
_MAX_TYPES = 1024


def _checked(probe: object, ep: EntryPointLike) -> Probe:
    """`probe`, when it is a nodecompat Probe (else TypeError); a class is checked once (an ABC's
    instances stay its instances: registration only adds)."""
    kind = type(probe)
    if kind not in _probe_types:
        if not isinstance(probe, Probe):
            raise TypeError(f"{ep.value} did not produce a nodecompat Probe")
        if len(_probe_types) >= _MAX_TYPES:
            _probe_types.clear()
        _probe_types.add(kind)
    return probe  # type: ignore[return-value]


def _from_plan(steps: tuple[tuple[EntryPointLike, str, Any, Any], ...]) -> tuple[list[Probe], list[LoadError]]:
    """load_probes() along the last full load's plan (_plan); a module replaced or removed since is
    loaded afresh (_load) and the plan dropped, as it is when anything fails."""
    probes: list[Probe] = []
    errors: list[LoadError] = []
    modules = sys.modules
    stale = False
    for ep, module_name, module, factory in steps:
        try:
            if modules.get(module_name) is not module:
                stale = True
                factory = _load(ep)
            probe = factory()
            probes.append(probe if type(probe) in _probe_types else _checked(probe, ep))
        except Exception as exc:  # a broken plugin must not take the others down
            errors.append(LoadError(ep.name, f"cannot load probe plugin {ep.value}: {exc}"))
    if stale or errors:
        _plan.clear()
    return probes, errors


def load_probes(only: Iterable[str] | None = None) -> tuple[list[Probe], list[LoadError]]:
    """Instantiate every registered probe (or only the named ones), sorted by name."""
    eps = _entry_points()
    if only is None and _plan and _plan[0] is eps:
        return _from_plan(_plan[1])
    wanted = set(only) if only is not None else None
    probes: list[Probe] = []
    errors: list[LoadError] = []
    seen: set[str] = set()
    steps: list[tuple[EntryPointLike, str, Any, Any]] = []
    for ep in eps:
        name = ep.name
        if name in seen or (wanted is not None and name not in wanted):
            continue
        seen.add(name)
        try:
            factory = _load(ep)
            probes.append(_checked(factory(), ep))
            steps.append((ep, ep.value.partition(":")[0].strip(), None, factory))
        except Exception as exc:  # a broken plugin must not take the others down
            errors.append(LoadError(name, f"cannot load probe plugin {ep.value}: {exc}"))
    if wanted is not None:
        for missing in sorted(wanted - seen):
            errors.append(LoadError(missing, f"no probe named {missing!r} is registered"))
    if only is None and not errors:
        plan = tuple((ep, m, sys.modules.get(m), f) for ep, m, _, f in steps)
        if all(module is not None for _, _, module, _ in plan):
            _plan[:] = [eps, plan]
    return probes, errors


def probe_names() -> list[str]:
    """Names of the installed probes (the group's entry points), sorted."""
    return sorted({ep.name for ep in _entry_points()})


def known_features(probes: Iterable[Probe] | None = None) -> dict[str, FeatureInfo]:
    """Feature name -> declaration, over the given probes (default: all registered)."""
    if probes is None:
        probes, _ = load_probes()
    out: dict[str, FeatureInfo] = {}
    for p in probes:
        for f in p.features:
            out[f.name] = f
    return out
