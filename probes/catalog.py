"""What the registered probes can report: the names that exist, which are NFD's, and NFD's view.

Built from the probes' FeatureInfo declarations (probes/base.py), it answers three questions the rule
engine asks about a spec's names:

- `provides(feature, element)`: can any probe ever report it? A spec naming `kernel.versoin` or
  pci.device `adress` names something no probe provides: NFD treats that as absent, but it is not a
  fact about the node, so the verdict says so (with `suggest`, a did-you-mean by difflib).
- `nfd_publishes(feature, element)`: does NFD publish it, or is it a nodecompat addition?
- `nfd_view(features)`: the node's features with every addition removed: exactly what NFD would
  publish, for `validate --nfd-compat` and `features --nfd-only`.

Features no probe declares (an NFD snapshot's usb.device, say) are kept in NFD's view: only what is
declared as an addition is hidden. difflib is the standard library's fuzzy matcher, good enough for
one-typo names among a few hundred; no dependency is warranted.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Iterable, Mapping
from functools import cache, lru_cache
from typing import Any, cast

from nodecompat.features import AttributeFeature, Features, FlagFeature, Instance, InstanceFeature
from nodecompat.probes.base import FeatureInfo, Probe

_SUGGEST_CUTOFF = 0.75
SUGGESTIONS_KEPT = 4096  # did-you-mean answers kept per catalog (a few hundred bytes each)


class FeatureCatalog:
    """The declarations of a set of probes, keyed by (lower-case) feature name."""

    def __init__(self, infos: Iterable[FeatureInfo]) -> None:
        self.infos: dict[str, FeatureInfo] = {f.name.lower(): f for f in infos}
        self._lock = threading.Lock()
        self._last: tuple[Features, Features] | None = None  # (input, its NFD view)
        # difflib is the costly part of judging a name, and the same few names come back every call
        self._suggest = lru_cache(maxsize=SUGGESTIONS_KEPT)(self._suggest_uncached)

    @classmethod
    def from_probes(cls, probes: Iterable[Probe]) -> FeatureCatalog:
        return cls(f for p in probes for f in p.features)

    @classmethod
    def registered(cls) -> FeatureCatalog:
        """Over every probe registered in the `nodecompat.probes` entry-point group (built once)."""
        return _registered()

    @classmethod
    def registered_on_first_use(cls) -> FeatureCatalog:
        """registered(), but the probe modules are imported only when the catalog is first asked
        something: an evaluation whose names the node all has never asks, and a CLI run such as
        `validate --features` then starts without importing every probe (fast start, issue 11)."""
        return cast(FeatureCatalog, _OnFirstUse())

    def info(self, feature: str) -> FeatureInfo | None:
        return self.infos.get(feature.lower())

    # -- names -----------------------------------------------------------------------------------
    def provides(self, feature: str, element: str | None = None) -> bool:
        """Whether some probe can report `feature` (and its element `element`, if given)."""
        info = self.info(feature)
        if info is None:
            return False
        return element is None or info.provides(element)

    def nfd_publishes(self, feature: str, element: str | None = None) -> bool:
        """False only for what a probe declares as a nodecompat addition."""
        info = self.info(feature)
        return info is None or info.nfd_publishes(element)

    def suggest(self, feature: str, element: str | None = None, *, nfd_only: bool = False) -> str:
        """A close declared name (`kernel.version` for `kernel.versoin`; `address` for `adress`), or "".

        For an element, suggests among the feature's declared attribute names (patterns excluded);
        with `nfd_only`, among NFD's names only. Answers are kept (SUGGESTIONS_KEPT, least recently used)."""
        return str(self._suggest(feature, element, nfd_only))

    def _suggest_uncached(self, feature: str, element: str | None, nfd_only: bool) -> str:
        if element is None:
            names = [n for n, i in self.infos.items() if not nfd_only or i.nfd]
            return closest_feature(feature.lower(), names)
        info = self.info(feature)
        if info is None or info.attributes is None:
            return ""
        names = [a.name for a in info.attributes if "<" not in a.name and (not nfd_only or info.nfd_publishes(a.name))]
        return closest(element, names)

    # -- NFD's view ------------------------------------------------------------------------------
    def nfd_view(self, features: Features) -> Features:
        """A copy of `features` without the declared additions (whole features and attributes).

        The last answer is kept, so evaluating many specs against one probe round filters once;
        `features` must not be changed after it is passed here (probe rounds never are)."""
        with self._lock:
            last = self._last
            if last is not None and last[0] is features:
                return last[1]
        view = self._filter(features)
        with self._lock:
            self._last = (features, view)
        return view

    def _filter(self, features: Features) -> Features:
        out = Features()
        for name, f in features.flags.items():
            if self.nfd_publishes(name):
                out.flags[name] = FlagFeature(set(f.elements))
        for name, a in features.attributes.items():
            if self.nfd_publishes(name):
                out.attributes[name] = AttributeFeature(_nfd_attrs(self.info(name), a.elements))
        for name, inst in features.instances.items():
            if self.nfd_publishes(name):
                info = self.info(name)
                out.instances[name] = InstanceFeature([Instance(_nfd_attrs(info, i.attributes)) for i in inst.elements])
        return out


class _OnFirstUse:
    """Stands in for _registered() and builds it at the first attribute asked."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_registered(), name)


@cache
def _registered() -> FeatureCatalog:
    from nodecompat.probes.registry import load_probes

    probes, _ = load_probes()
    return FeatureCatalog.from_probes(probes)


def _nfd_attrs(info: FeatureInfo | None, elements: Mapping[str, str]) -> dict[str, str]:
    if info is None or not info.additions():
        return dict(elements)
    return {k: v for k, v in elements.items() if info.nfd_publishes(k)}


def closest_feature(name: str, names: Iterable[str]) -> str:
    """Like closest, but source and feature part must each be close: `kernal.version` and
    `kernel.versoin` find `kernel.version`; `usb.device` does not find `gpu.device`."""
    src, _, feat = name.partition(".")
    best, score = "", 0.0
    for cand in sorted(set(names)):
        csrc, _, cfeat = cand.partition(".")
        if difflib.SequenceMatcher(None, name, cand).real_quick_ratio() < _SUGGEST_CUTOFF:
            continue  # cheap upper bound: too different in length to be a typo
        s = min(_ratio(src, csrc), _ratio(feat, cfeat))
        if s >= _SUGGEST_CUTOFF and s > score:
            best, score = cand, s
    return best


def _ratio(a: str, b: str) -> float:
    return 1.0 if a == b else difflib.SequenceMatcher(None, a, b).ratio()


def closest(word: str, names: Iterable[str]) -> str:
    got = difflib.get_close_matches(word, sorted(set(names)), n=1, cutoff=_SUGGEST_CUTOFF)
    return got[0] if got else ""
