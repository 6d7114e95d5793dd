"""Device-level rules as Dynamic Resource Allocation objects (resource.k8s.io/v1): DeviceClass per vendor
driver and a ResourceClaimTemplate whose CEL selectors use the attribute names the drivers publish.

Attribute names, checked in the drivers' sources:
- NVIDIA k8s-dra-driver-gpu (driver `gpu.nvidia.com`, cmd/gpu-kubelet-plugin/deviceinfo.go GpuInfo.Attributes):
  productName, architecture (strings), driverVersion, cudaComputeCapability, cudaDriverVersion (versions);
  standard `resource.kubernetes.io/pciBusID` (k8s.io/dynamic-resource-allocation/deviceattribute).
- DraNet (driver `dra.net`, pkg/apis/attributes.go): ifName, pciAddress, state (strings), mtu, numaNode (ints).
Kubernetes' standard attributes are pciBusID and pcieRoot only (deviceattribute/attribute.go); there is no
standard numaNode, so gpu.device numa_node has no equivalent (DraNet publishes its own dra.net/numaNode).

An NFD expression becomes `has(attr) && cond` or, for operators NFD counts as matching an absent attribute,
`!has(attr) || cond` (CompiledExpression.evaluate(present=False) decides), so absence means what it means
in NFD. Versions compare with the Kubernetes CEL semver library (`x.compareTo(semver("1.2.3"))`).
Sets become `firstAvailable` alternatives in weight order, one request per (driver, k-th device term);
requests are ANDed, so DRA may take set A's GPU with set B's NIC (it has no cross-request alternatives).
Everything without an equivalent is listed (Untranslated) with why; the selectors it leaves are looser.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from nodecompat.engine import expressions as ex
from nodecompat.engine.expressions import ExpressionError, MatchExpression, go_atoi, parse_version
from nodecompat.engine.spec import FeatureTerm, Spec
from nodecompat.translate.common import TranslateError, dns_name, set_names, weight_order

DRA_API = "resource.k8s.io/v1"
# resource.k8s.io/v1 CELDeviceSelector: "The length of the expression must be smaller or equal to 10 Ki."
MAX_CEL_CHARS = 10 * 1024
NVIDIA = "gpu.nvidia.com"
DRANET = "dra.net"
STANDARD = "resource.kubernetes.io"
NODE_LEVEL_WHY = (
    "node-level fact (kernel, OS, CPU, memory, drivers...): DRA selects devices, not nodes; "
    "place the pod with the NodeFeatureRule labels (--to nodefeaturerule) for it"
)


@dataclass(frozen=True)
class Attr:
    """A DRA attribute: `device.attributes[domain].name` of CEL type kind (string, int, version)."""

    domain: str
    name: str
    kind: str


# NFD feature -> (driver, attribute map, implied attributes: value every device of that driver has).
GPU_ATTRS = {
    "product": Attr(NVIDIA, "productName", "string"),
    "architecture": Attr(NVIDIA, "architecture", "string"),
    "driver_version": Attr(NVIDIA, "driverVersion", "version"),
    "compute_capability": Attr(NVIDIA, "cudaComputeCapability", "version"),
    "address": Attr(STANDARD, "pciBusID", "string"),
}
NIC_ATTRS = {
    "name": Attr(DRANET, "ifName", "string"),
    "address": Attr(DRANET, "pciAddress", "string"),
    "operstate": Attr(DRANET, "state", "string"),
    "mtu": Attr(DRANET, "mtu", "int"),
    "numa_node": Attr(DRANET, "numaNode", "int"),
}
# Facts the driver implies for every device it publishes: {attribute: values one of which each device has}.
IMPLIED: dict[str, dict[str, tuple[str, ...]]] = {
    "gpu.device": {"vendor": ("nvidia",), "vendor_id": ("10de",), "driver": ("nvidia",)},
    "pci.device": {"vendor": ("10de",), "class": ("0300", "0302")},
    "network.device": {},
}
DEVICE_FEATURES: dict[str, tuple[str, dict[str, Attr]]] = {
    "gpu.device": (NVIDIA, GPU_ATTRS),
    "pci.device": (NVIDIA, {"address": GPU_ATTRS["address"]}),
    "network.device": (DRANET, NIC_ATTRS),
}
NOT_PUBLISHED = {
    NVIDIA: "the NVIDIA DRA driver does not publish it (it publishes productName, architecture, driverVersion, "
    "cudaComputeCapability, cudaDriverVersion, uuid, and the standard pciBusID/pcieRoot)",
    DRANET: "DraNet does not publish it (it publishes ifName, pciAddress, mac, state, mtu, numaNode, type, "
    "sriov, sriovVfs, rdma, virtual, ...)",
}


@dataclass
class Untranslated:
    """An expression (or term) with no DRA equivalent, and why."""

    where: str
    what: str
    why: str

    def to_dict(self) -> dict[str, str]:
        return {"where": self.where, "expression": self.what, "why": self.why}


@dataclass
class DeviceSelector:
    """One device term of one set as a driver's CEL selector (`expression` is a CEL bool expression)."""

    set_index: int
    driver: str
    expression: str


@dataclass
class DraTranslation:
    objects: list[dict[str, Any]] = field(default_factory=list)
    selectors: list[DeviceSelector] = field(default_factory=list)
    untranslated: list[Untranslated] = field(default_factory=list)


def cel_string(s: str) -> str:
    """A CEL double-quoted string literal (JSON escapes are CEL escapes for these characters)."""
    return json.dumps(s, ensure_ascii=False)


def _version_literal(v: str) -> str:
    major, minor, patch = parse_version(v)
    return f'semver("{major}.{minor}.{patch}")'


def expression_cel(e: MatchExpression, a: Attr) -> str:
    """The CEL for NFD expression `e` on attribute `a`; ValueError(why) when there is no equivalent."""
    ref = f"device.attributes[{cel_string(a.domain)}].{a.name}"
    has = f"has({ref})"
    op = e.op
    if op == ex.ANY:
        return "true"
    if op == ex.EXISTS:
        return has
    if op == ex.DOES_NOT_EXIST:
        return f"!{has}"
    try:
        absent = e.compiled().evaluate(False, None)
    except ExpressionError as exc:
        raise ValueError(f"the expression is invalid: {exc}") from None
    cond = _condition(e, a, ref)
    return f"(!{has} || {cond})" if absent else f"({has} && {cond})"


def _condition(e: MatchExpression, a: Attr, ref: str) -> str:
    op = e.op
    if op in (ex.IN, ex.NOT_IN):
        if a.kind == "string":
            alts = "[" + ", ".join(cel_string(v) for v in e.values) + "]"
            test = f"{ref} in {alts}"
        elif a.kind == "int":
            if any(not _canonical_int(v) for v in e.values):
                raise ValueError(f"NFD compares {op} as text; a value that is not a plain integer has no int form")
            test = f"{ref} in [" + ", ".join(e.values) + "]"
        else:
            try:
                test = " || ".join(f"{ref}.compareTo({_version_literal(v)}) == 0" for v in e.values)
            except ValueError as exc:
                raise ValueError(f"a value is not a version: {exc}") from None
            test = f"({test})"
        return test if op == ex.IN else f"!({test})"
    if op == ex.IN_REGEXP:
        if a.kind != "string":
            raise ValueError(f"{a.domain}/{a.name} is a {a.kind}, not a string a regexp can match")
        return "(" + " || ".join(f"{ref}.matches({cel_string(v)})" for v in e.values) + ")"
    if op in ex.NUMERIC_OPS:
        bounds = {
            ex.GT: (">",),
            ex.GE: (">=",),
            ex.LT: ("<",),
            ex.LE: ("<=",),
            ex.GT_LT: (">", "<"),
            ex.GE_LE: (">=", "<="),
        }[op]
        if e.type == "version":
            if a.kind != "version":
                raise ValueError(f"{a.domain}/{a.name} is a {a.kind}, not a version")
            try:
                return (
                    "("
                    + " && ".join(
                        f"{ref}.compareTo({_version_literal(v)}) {cmp} 0"
                        for cmp, v in zip(bounds, e.values, strict=True)
                    )
                    + ")"
                )
            except ValueError as exc:
                raise ValueError(f"a value is not a version: {exc}") from None
        if a.kind != "int":
            raise ValueError(f"NFD compares {op} as integers; {a.domain}/{a.name} is a {a.kind}")
        try:
            nums = [go_atoi(v) for v in e.values]
        except ValueError:
            raise ValueError("a value is not an integer") from None
        return "(" + " && ".join(f"{ref} {cmp} {n}" for cmp, n in zip(bounds, nums, strict=True)) + ")"
    raise ValueError(f"op {op} needs a boolean attribute; {a.domain}/{a.name} is a {a.kind}")


def _canonical_int(v: str) -> bool:
    try:
        return str(go_atoi(v)) == v
    except ValueError:
        return False


def term_selector(t: FeatureTerm, where: str, set_index: int, out: DraTranslation) -> DeviceSelector | None:
    """The CEL selector for a device term (None when the driver cannot have such a device at all)."""
    feature = t.feature.lower()
    driver, attrs = DEVICE_FEATURES[feature]
    implied = IMPLIED[feature]
    if t.match_name is not None:
        out.untranslated.append(
            Untranslated(
                f"{where}.matchName",
                t.match_name.describe(),
                "matchName tests attribute names, which DRA selectors cannot list",
            )
        )
    exprs = t.match_expressions or {}
    if feature == "pci.device" and "vendor" not in exprs:
        out.untranslated.append(
            Untranslated(
                where,
                f"{t.feature} without vendor",
                "no DRA driver publishes generic PCI devices; only vendor 10de "
                "(NVIDIA GPUs, driver gpu.nvidia.com) is translated",
            )
        )
        return None
    if feature == "gpu.device" and not ({"vendor", "vendor_id"} & exprs.keys()):
        out.untranslated.append(
            Untranslated(
                where,
                f"{t.feature} without vendor",
                f"NFD matches any vendor's GPU here; only NVIDIA GPUs ({driver}) are translated",
            )
        )
    parts: list[str] = []
    for name, e in exprs.items():
        path = f"{where}.matchExpressions.{name}"
        if name in implied:
            try:
                hits = [e.compiled().evaluate(True, v) for v in implied[name]]
            except ExpressionError as exc:
                out.untranslated.append(Untranslated(path, e.describe(), f"invalid expression: {exc}"))
                continue
            if all(hits):
                continue  # every device of this driver has it: the device class says it
            why = (
                f"only {driver} is translated and its devices have {name} {'/'.join(implied[name])}"
                if not any(hits)
                else f"{driver} does not publish {name}, which tells its devices apart here"
            )
            out.untranslated.append(Untranslated(path, e.describe(), why))
            if not any(hits):
                return None
            continue
        a = attrs.get(name)
        if a is None:
            out.untranslated.append(Untranslated(path, e.describe(), NOT_PUBLISHED[driver]))
            continue
        try:
            parts.append(expression_cel(e, a))
        except ValueError as exc:
            out.untranslated.append(Untranslated(path, e.describe(), str(exc)))
    expression = " && ".join(parts) if parts else "true"
    if len(expression) > MAX_CEL_CHARS:
        out.untranslated.append(
            Untranslated(
                where,
                t.feature,
                f"its CEL selector would pass the API's {MAX_CEL_CHARS}-character limit ({len(expression)})",
            )
        )
        return None
    return DeviceSelector(set_index, driver, expression)


def device_class(driver: str) -> dict[str, Any]:
    return {
        "apiVersion": DRA_API,
        "kind": "DeviceClass",
        "metadata": {"name": class_name(driver)},
        "spec": {"selectors": [{"cel": {"expression": f"device.driver == {cel_string(driver)}"}}]},
    }


def class_name(driver: str) -> str:
    return dns_name(f"nodecompat-{driver.replace('.', '-')}", "nodecompat-devices")


def translate_dra(spec: Spec, spec_name: str) -> DraTranslation:
    """DeviceClasses + one ResourceClaimTemplate for the spec's device terms; the rest listed as untranslated.

    TranslateError when the spec has no device-level term at all."""
    out = DraTranslation()
    names = set_names(spec)
    # (driver, k) -> [(set index, selector)] in weight order
    requests: dict[tuple[str, int], list[DeviceSelector]] = {}
    for i in weight_order(spec):
        c = spec.compatibilities[i]
        seen: dict[str, int] = {}
        for ri, r in enumerate(c.rules):
            terms = [
                (f"compatibilities[{i}].rules[{ri}].matchFeatures[{ti}]", t) for ti, t in enumerate(r.match_features)
            ]
            for ai, alt in enumerate(r.match_any):
                for ti, t in enumerate(alt.match_features):
                    where = f"compatibilities[{i}].rules[{ri}].matchAny[{ai}].matchFeatures[{ti}]"
                    out.untranslated.append(
                        Untranslated(
                            where, t.feature, "matchAny alternatives are not translated to DRA (requests are ANDed)"
                        )
                    )
            for where, t in terms:
                if t.feature.lower() not in DEVICE_FEATURES:
                    out.untranslated.append(Untranslated(where, t.feature, NODE_LEVEL_WHY))
                    continue
                sel = term_selector(t, where, i, out)
                if sel is None:
                    continue
                k = seen.get(sel.driver, 0)
                seen[sel.driver] = k + 1
                requests.setdefault((sel.driver, k), []).append(sel)
                out.selectors.append(sel)
    if not requests:
        raise TranslateError(
            "the spec has no device-level rule DRA can express (pci.device with vendor 10de, "
            "gpu.device, network.device)"
        )
    drivers = sorted({d for d, _k in requests})
    out.objects.extend(device_class(d) for d in drivers)
    reqs: list[dict[str, Any]] = []
    for (driver, k), sels in sorted(requests.items()):
        req_name = dns_name(f"{driver.split('.')[0]}-{k}", f"device-{k}")
        subs: list[dict[str, Any]] = [
            {
                "name": dns_name(names[s.set_index], f"set{s.set_index}"),
                "deviceClassName": class_name(driver),
                "selectors": [{"cel": {"expression": s.expression}}],
            }
            for s in sels
        ]
        if len(subs) == 1:
            reqs.append({"name": req_name, "exactly": {k2: v for k2, v in subs[0].items() if k2 != "name"}})
        else:
            reqs.append({"name": req_name, "firstAvailable": subs})
    out.objects.append(
        {
            "apiVersion": DRA_API,
            "kind": "ResourceClaimTemplate",
            "metadata": {"name": dns_name(f"nodecompat-{spec_name}", "nodecompat")},
            "spec": {"spec": {"devices": {"requests": reqs}}},
        }
    )
    return out
