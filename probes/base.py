"""The probe plugin interface: a name, the features it provides, and discover().

Like NFD's source/ packages, a probe knows one part of the host and nothing about gRPC, caching or
other probes. It reads the host only through the HostRoot it is given, so a fixture tree can stand
in for the host. The features it declares (with their attributes) drive `nodecompat lint`,
docs/features.md and NFD mode, so a declaration is the single statement of what a feature is.

NFD's or ours: every FeatureInfo and AttributeInfo says whether NFD publishes it (`nfd=True`, the
default: same name, same derivation as NFD's source/<name>/ code) or whether it is a nodecompat
addition (`nfd=False`: pci.device `address`, hugepage totals, gpu.*, memory.size, ...). An
attribute is NFD's only when its feature is too. NFD mode (`validate --nfd-compat`, `features
--nfd-only`, `nfd_compat` on the RPC) hides every addition, so matchName/DoesNotExist over names
give NFD's answer. tests/test_nfd_marker.py holds NFD's own list (transcribed from its Go source,
file cited per feature): a feature or attribute marked `nfd=True` that NFD does not publish fails it.

    features = (
        FeatureInfo("pci.device", frozenset({"instance"}), attributes=(
            AttributeInfo("vendor", "hex", ...),                 # NFD publishes it
            AttributeInfo("driver", "string", ..., nfd=False),   # a nodecompat addition
        )),
        FeatureInfo("memory.size", ..., nfd=False),              # a whole feature of ours
    )

Volatile (`volatile=True`): a runtime usage value (memory.size `available_bytes`, free huge pages), a
fact of one round but not of the node's profile; the fingerprint and the inventory leave it out
(nodecompat/fleet/volatile.py). NFD publishes no such value (source/memory/memory.go has no free memory).

Attribute names may be patterns: a `<...>` part stands for any non-empty text (`hugepages-<size>`);
when several declarations match a name, an exact one wins, else the one with the most literal text
(`hugepages-<size>.total` over `hugepages-<size>` for `hugepages-2Mi.total`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cache
from typing import ClassVar, Literal

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot

Kind = Literal["flag", "attribute", "instance"]


@dataclass(frozen=True)
class AttributeInfo:
    """One attribute (or flag element family) of a feature."""

    name: str
    type: str = "string"  # string | int | bool | version | hex
    source: str = ""  # host file it comes from
    # True: NFD publishes it under this name with NFD's derivation. False: a nodecompat addition,
    # hidden in NFD mode.
    nfd: bool = True
    description: str = ""
    # True: a runtime usage value (free memory, free huge pages) that changes from round to round on a
    # busy host. It is a fact of the round (GetFeatures, the node's own ValidateImage) but not part of
    # the node's profile: the fingerprint, WatchFeatures and the aggregator's stored sets leave it out
    # (nodecompat/fleet/volatile.py), and the aggregator answers a spec reading it live. Built-in probes only:
    # a plugin's declaration is ignored (the aggregator may not have the plugin: its values stay in the profile).
    volatile: bool = False

    def matches(self, name: str) -> bool:
        """Whether attribute `name` is this declaration (exactly, or by its `<...>` pattern)."""
        return self.name == name or ("<" in self.name and _pattern(self.name).fullmatch(name) is not None)


@dataclass(frozen=True)
class FeatureInfo:
    """A feature a probe provides."""

    name: str
    kinds: frozenset[Kind]
    # Known attributes; None when the attribute set is open (kernel.config, system.osrelease, ...).
    attributes: tuple[AttributeInfo, ...] | None = None
    # True: NFD publishes this feature. False: the whole feature is a nodecompat addition.
    nfd: bool = True
    source: str = ""
    description: str = ""
    # What is published when the host source is missing or unreadable, as NFD does it
    # ("absent", "empty", or the value, e.g. 'enabled: "false"'); shown in docs/features.md.
    absent: str = "absent"

    def attribute_names(self) -> frozenset[str] | None:
        return None if self.attributes is None else frozenset(a.name for a in self.attributes)

    def open_names(self) -> bool:
        """Whether any element name may occur: flag features (CPU flags, module names) and open
        attribute sets (kernel.config, system.osrelease, local.*) cannot say a name is unknown."""
        return self.attributes is None or "flag" in self.kinds

    def attribute(self, name: str) -> AttributeInfo | None:
        """The declaration of attribute `name`: exact, else the matching pattern with the most literal
        text; None when none matches (or the set is open)."""
        if self.attributes is None:
            return None
        best: AttributeInfo | None = None
        for a in self.attributes:
            if a.name == name:
                return a
            if a.matches(name) and (best is None or _literal_len(a.name) > _literal_len(best.name)):
                best = a
        return best

    def provides(self, name: str) -> bool:
        """Whether a probe declaring this feature can ever report element `name` of it."""
        return self.open_names() or self.attribute(name) is not None

    def nfd_publishes(self, name: str | None = None) -> bool:
        """Whether NFD publishes this feature (name None) or its element `name`. Undeclared names of a
        feature NFD publishes count as NFD's (open sets, flags, names from an NFD snapshot)."""
        if not self.nfd:
            return False
        if name is None:
            return True
        a = self.attribute(name)
        return a is None or a.nfd

    def additions(self) -> tuple[AttributeInfo, ...]:
        """The declared attributes NFD does not publish (all of them when the feature is an addition)."""
        attrs = self.attributes or ()
        return attrs if not self.nfd else tuple(a for a in attrs if not a.nfd)


@cache
def _pattern(declared: str) -> re.Pattern[str]:
    return re.compile(".+".join(re.escape(p) for p in re.split(r"<[^<>]+>", declared)))


def _literal_len(declared: str) -> int:
    return len(re.sub(r"<[^<>]+>", "", declared))


@dataclass
class ProbeOutput:
    """What one discover() call found, plus notes a person should see in the probe status."""

    features: Features = field(default_factory=Features)
    notes: list[str] = field(default_factory=list)


class Probe(ABC):
    """A probe plugin. Subclasses set `name` and `features` and implement discover()."""

    name: ClassVar[str]
    features: ClassVar[tuple[FeatureInfo, ...]]
    # Seconds after which a discover() call is abandoned and reported as hung.
    timeout: ClassVar[float] = 10.0
    # True: discover() reads nothing but the host it is given (and inputs it logs with
    # probe_memo.noted / refuses with probe_memo.not_replayable), so a long-lived runner may reuse
    # its last result while a replay of its reads answers the same (probes/probe_memo.py). False
    # (the default, so a plugin nobody audited for it): run every round. Declared per class: a subclass
    # does not inherit it (probe_memo.declared_memoizable).
    memoizable: ClassVar[bool] = False

    @abstractmethod
    def discover(self, host: HostRoot) -> ProbeOutput:
        """Read the host and return the features found. May raise; the runner isolates it."""

    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]
