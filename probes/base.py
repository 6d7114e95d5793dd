"""The probe plugin interface: a name, the features it provides, and discover().

Like NFD's source/ packages, a probe knows one part of the host and nothing about gRPC, caching or
other probes. It reads the host only through the HostRoot it is given, so a fixture tree can stand
in for the host. The features it declares (with their attributes) drive `nodecompat lint` and
docs/features.md, so a declaration is the single statement of what a feature is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
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
    nfd: bool = True  # NFD has it too
    description: str = ""


@dataclass(frozen=True)
class FeatureInfo:
    """A feature a probe provides."""

    name: str
    kinds: frozenset[Kind]
    # Known attributes; None when the attribute set is open (kernel.config, system.osrelease, ...).
    attributes: tuple[AttributeInfo, ...] | None = None
    nfd: bool = True
    source: str = ""
    description: str = ""

    def attribute_names(self) -> frozenset[str] | None:
        return None if self.attributes is None else frozenset(a.name for a in self.attributes)


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

    @abstractmethod
    def discover(self, host: HostRoot) -> ProbeOutput:
        """Read the host and return the features found. May raise; the runner isolates it."""

    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]
