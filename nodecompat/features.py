"""The feature model: NFD's three kinds of feature and NFD's JSON wire format.

NFD (api/nfd/v1alpha1) keeps a node's facts as flags (name sets), attributes (name -> string maps)
and instances (lists of attribute maps), keyed by "<source>.<feature>". We keep exactly that shape so
that a spec written for NFD sees the same facts here, and so that `nodecompat features -o json`
prints what `nfd export features` prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FlagFeature:
    """A set of names, e.g. kernel.loadedmodule (module names) or cpu.cpuid (CPU flags)."""

    elements: set[str] = field(default_factory=set)


@dataclass
class AttributeFeature:
    """A name -> value map, e.g. kernel.version {major: "6", ...}."""

    elements: dict[str, str] = field(default_factory=dict)


@dataclass
class Instance:
    """One instance of an instance feature, e.g. one PCI device."""

    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class InstanceFeature:
    """A list of instances, e.g. pci.device."""

    elements: list[Instance] = field(default_factory=list)


@dataclass
class Features:
    """All facts of one node (or the part one probe found)."""

    flags: dict[str, FlagFeature] = field(default_factory=dict)
    attributes: dict[str, AttributeFeature] = field(default_factory=dict)
    instances: dict[str, InstanceFeature] = field(default_factory=dict)

    # -- building -------------------------------------------------------------------------------
    def add_flags(self, name: str, elements: Iterable[str]) -> None:
        feat = self.flags.get(name)
        if feat is None:  # a new feature: its set made from `elements` in one step
            self.flags[name] = FlagFeature(set(elements))
        else:
            feat.elements.update(elements)

    def add_attributes(self, name: str, elements: Mapping[str, str]) -> None:
        feat = self.attributes.get(name)
        if feat is None:  # a new feature holds _str_values' new dict itself (no second dict, no update)
            self.attributes[name] = AttributeFeature(_str_values(elements))
        else:
            feat.elements.update(_str_values(elements))

    def add_instance(self, name: str, attributes: Mapping[str, str]) -> None:
        self.instances.setdefault(name, InstanceFeature()).elements.append(Instance(_str_values(attributes)))

    def set_instances(self, name: str, instances: Iterable[Mapping[str, str]]) -> None:
        """Declare an instance feature (present even when it has no instances)."""
        append = self.instances.setdefault(name, InstanceFeature()).elements.append
        for attrs in instances:
            append(Instance(_str_values(attrs)))

    def put_instances(self, name: str, instances: Iterable[Instance]) -> None:
        """Declare an instance feature (present even when it has no instances) holding these Instance objects
        themselves: neither copied nor checked. For a probe that built each one from values it read as str
        (as set_instances would hold them: a dict of str -> str) and keeps it between rounds for the same
        input; they are shared (as a round's features are: probes/round_merge.py) and must not be changed.
        Untrusted input (features.d, a wire message, a plugin) goes through set_instances."""
        self.instances.setdefault(name, InstanceFeature()).elements.extend(instances)

    def merge(self, other: Features) -> None:
        """Add every fact of `other` (later facts win for attribute values)."""
        for n, f in other.flags.items():
            self.add_flags(n, f.elements)
        for n, a in other.attributes.items():
            self.add_attributes(n, a.elements)
        for n, i in other.instances.items():
            self.set_instances(n, (inst.attributes for inst in i.elements))

    # -- querying -------------------------------------------------------------------------------
    def names(self) -> set[str]:
        """Every feature name present in any kind."""
        return set(self.flags) | set(self.attributes) | set(self.instances)

    def filtered(self, prefixes: Iterable[str]) -> Features:
        """A copy keeping only features whose name starts with one of `prefixes` (all if none)."""
        pre = tuple(prefixes)
        if not pre:
            return self.copy()

        def keep(n: str) -> bool:
            return n.startswith(pre)

        return Features(
            flags={n: FlagFeature(set(f.elements)) for n, f in self.flags.items() if keep(n)},
            attributes={n: AttributeFeature(dict(a.elements)) for n, a in self.attributes.items() if keep(n)},
            instances={
                n: InstanceFeature([Instance(dict(x.attributes)) for x in i.elements])
                for n, i in self.instances.items()
                if keep(n)
            },
        )

    def subset(self, names: Iterable[str]) -> Features:
        """A copy keeping only the features named exactly."""
        keep = set(names)
        out = Features()
        out.merge(
            Features(
                flags={n: f for n, f in self.flags.items() if n in keep},
                attributes={n: a for n, a in self.attributes.items() if n in keep},
                instances={n: i for n, i in self.instances.items() if n in keep},
            )
        )
        return out

    def copy(self) -> Features:
        out = Features()
        out.merge(self)
        return out

    # -- NFD wire format ------------------------------------------------------------------------
    def to_nfd(self) -> dict[str, Any]:
        """NFD's JSON wire format (`nfd export features`), with sorted keys for stable output."""
        return {
            "flags": {
                n: {"elements": {e: {} for e in sorted(f.elements)}} for n, f in sorted(self.flags.items())
            },
            "attributes": {
                n: {"elements": dict(sorted(a.elements.items()))} for n, a in sorted(self.attributes.items())
            },
            "instances": {
                n: {"elements": [{"attributes": dict(sorted(x.attributes.items()))} for x in i.elements]}
                for n, i in sorted(self.instances.items())
            },
        }

    @classmethod
    def from_nfd(cls, data: Mapping[str, Any]) -> Features:
        """Parse NFD's wire format (as printed by `nfd export features` or `nodecompat features`).

        Strict about shape, because a snapshot decides verdicts: every feature is an object, elements of the
        right kind, values strings (numbers and booleans are taken as Go's %v renders them), never null.
        Raises ValueError naming the offending path.
        """
        if not isinstance(data, Mapping):
            raise ValueError("features: expected an object with flags/attributes/instances")
        out = cls()
        for kind in ("flags", "attributes", "instances"):
            section = data.get(kind)
            if section is None:
                continue
            if not isinstance(section, Mapping):
                raise ValueError(f"features.{kind}: expected an object")
            for name, feat in section.items():
                where = f"features.{kind}.{name}"
                if not isinstance(feat, Mapping):
                    raise ValueError(f"{where}: expected an object with `elements`")
                elements = feat.get("elements")
                where += ".elements"
                if kind == "flags":
                    if elements is None:
                        elements = {}
                    if not isinstance(elements, Mapping):
                        raise ValueError(f"{where}: expected an object of names")
                    out.add_flags(name, (str(e) for e in elements))
                elif kind == "attributes":
                    if elements is None:
                        elements = {}
                    if not isinstance(elements, Mapping):
                        raise ValueError(f"{where}: expected an object of name: value")
                    out.add_attributes(name, {str(k): _wire_str(v, f"{where}.{k}") for k, v in elements.items()})
                else:
                    if elements is None:
                        elements = []
                    if not isinstance(elements, list):
                        raise ValueError(f"{where}: expected a list of instances")
                    insts = []
                    for i, inst in enumerate(elements):
                        if not isinstance(inst, Mapping):
                            raise ValueError(f"{where}[{i}]: expected an object with `attributes`")
                        attrs = inst.get("attributes")
                        if attrs is None:
                            attrs = {}
                        if not isinstance(attrs, Mapping):
                            raise ValueError(f"{where}[{i}].attributes: expected an object")
                        insts.append({str(k): _wire_str(v, f"{where}[{i}].attributes.{k}") for k, v in attrs.items()})
                    out.set_instances(name, insts)
        return out


_ONLY_STR = frozenset({str})


def _str_values(elements: Mapping[str, str]) -> dict[str, str]:
    """A new dict of `elements` with every value str(value), as {k: str(v) for k, v in elements.items()}.
    The probes pass dicts of str values (a round builds ~50): those are copied with dict() and their
    values' types checked in C (map(type, ...)), not converted one by one; anything else (another
    Mapping, a value of another type or of a subclass of str) goes through the comprehension."""
    if type(elements) is dict:
        out = dict(elements)
        if _ONLY_STR.issuperset(map(type, out.values())):
            return out
    return {k: str(v) for k, v in elements.items()}


def _wire_str(v: Any, where: str) -> str:
    """A wire value as NFD holds it: a string; numbers and booleans as Go's %v renders them."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    raise ValueError(f"{where}: expected a string value, got {'null' if v is None else type(v).__name__}")
