"""Finding probes: the entry-point group `nodecompat.probes`, for built-ins and third parties alike.

One path for every probe (as pytest/pluggy do) means the plugin path is always exercised. A plugin
that fails to load does not stop the others: it is returned as a load error, which the runner turns
into a failed probe status.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from nodecompat.probes.base import FeatureInfo, Probe

ENTRY_POINT_GROUP = "nodecompat.probes"


@dataclass(frozen=True)
class LoadError:
    name: str
    error: str


@functools.cache
def _entry_points() -> tuple[EntryPoint, ...]:
    """The group's entry points, sorted by name: scanned once per process (the scan of every
    installed distribution's metadata costs more than a probe round)."""
    return tuple(sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name))


def load_probes(only: Iterable[str] | None = None) -> tuple[list[Probe], list[LoadError]]:
    """Instantiate every registered probe (or only the named ones), sorted by name."""
    wanted = set(only) if only is not None else None
    probes: list[Probe] = []
    errors: list[LoadError] = []
    seen: set[str] = set()
    for ep in _entry_points():
        if ep.name in seen or (wanted is not None and ep.name not in wanted):
            continue
        seen.add(ep.name)
        try:
            factory = ep.load()
            probe = factory()
            if not isinstance(probe, Probe):
                raise TypeError(f"{ep.value} did not produce a nodecompat Probe")
            probes.append(probe)
        except Exception as exc:  # a broken plugin must not take the others down
            errors.append(LoadError(ep.name, f"cannot load probe plugin {ep.value}: {exc}"))
    if wanted is not None:
        for missing in sorted(wanted - seen):
            errors.append(LoadError(missing, f"no probe named {missing!r} is registered"))
    return probes, errors


def known_features(probes: Iterable[Probe] | None = None) -> dict[str, FeatureInfo]:
    """Feature name -> declaration, over the given probes (default: all registered)."""
    if probes is None:
        probes, _ = load_probes()
    out: dict[str, FeatureInfo] = {}
    for p in probes:
        for f in p.features:
            out[f.name] = f
    return out
