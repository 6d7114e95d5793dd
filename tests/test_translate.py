"""`nodecompat translate`: NFD NodeFeatureRule/NodeFeatureGroup and DRA objects, checked, not trusted.

- Every CEL selector `--to dra` writes is compiled with a CEL implementation (PyPI cel-python) and evaluated
  on the device attribute maps the vendor drivers would publish for the fixture hosts' devices (NVIDIA
  k8s-dra-driver-gpu cmd/gpu-kubelet-plugin/deviceinfo.go; DraNet pkg/apis/attributes.go + pkg/inventory/db.go;
  Kubernetes deviceattribute/attribute.go), with each attribute also removed in turn; it must agree with
  nodecompat's own verdict on that device. Versions use Kubernetes' CEL semver library, provided here as
  `semver()` and `compareTo()` over (major, minor, patch), as k8s.io/apiserver/pkg/cel/library/semver does.
- The NodeFeatureRule's merged set rules, read back as a spec, decide as the original sets on every host.
- All objects validate with kubernetes-validate (CRDs only warn: the NFD schema is not bundled).
"""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import celpy
import kubernetes_validate
import pytest
import yaml
from celpy import celtypes
from support_fleetmem import fixture_round

from nodecompat.engine.evaluate import evaluate
from nodecompat.engine.expressions import parse_version
from nodecompat.engine.spec import Spec, parse_spec
from nodecompat.features import Features, Instance, InstanceFeature
from nodecompat.translate import dra, nfd
from nodecompat.translate.common import TranslateError, merge_set

HOSTS = ("h100-server", "amd-mi300", "plain-vm")
K8S = kubernetes_validate.latest_version()

DEVICE_SPEC = """
version: v1alpha1
compatibilities:
- {tag: h100, weight: 100, rules: [{name: h100, matchFeatures: [{feature: gpu.device, matchExpressions: {
    vendor: {op: In, value: [nvidia]}, product: {op: In, value: ["NVIDIA H100 80GB HBM3"]},
    driver_version: {op: Ge, value: ["535"], type: version},
    compute_capability: {op: Ge, value: ["8.0"], type: version}}}]}]}
- {tag: hopper, weight: 50, rules: [{name: arch, matchFeatures: [{feature: gpu.device, matchExpressions: {
    architecture: {op: InRegexp, value: ["^Hop", "^Black"]}, address: {op: Exists}}}]}]}
- {tag: oldgpu, weight: 40, rules: [{name: old, matchFeatures: [{feature: gpu.device, matchExpressions: {
    driver_version: {op: Lt, value: ["500.1"], type: version}}}]}]}
- {tag: notampere, weight: 30, rules: [{name: na, matchFeatures: [{feature: gpu.device, matchExpressions: {
    product: {op: NotIn, value: ["NVIDIA A100-SXM4-80GB"]},
    compute_capability: {op: GtLt, value: ["8.0", "9.5"], type: version}}}]}]}
- {tag: cc90, weight: 20, rules: [{name: cc, matchFeatures: [{feature: gpu.device, matchExpressions: {
    compute_capability: {op: In, value: ["9.0", "7.5"], type: version}, address: {op: DoesNotExist}}}]}]}
- {tag: fastnic, weight: 10, rules: [{name: nic, matchFeatures: [{feature: network.device, matchExpressions: {
    mtu: {op: Gt, value: ["1500"]}, operstate: {op: In, value: [up]}}}]}]}
- {tag: ensnuma0, weight: 9, rules: [{name: nic, matchFeatures: [{feature: network.device, matchExpressions: {
    name: {op: InRegexp, value: ["^ens"]}, numa_node: {op: In, value: ["0"]}}}]}]}
- {tag: smallmtu, weight: 8, rules: [{name: nic, matchFeatures: [{feature: network.device, matchExpressions: {
    mtu: {op: GeLe, value: ["1400", "1500"]}, address: {op: NotIn, value: ["0000:1a:00.0"]}}}]}]}
- {tag: nonuma, weight: 7, rules: [{name: nic, matchFeatures: [{feature: network.device, matchExpressions: {
    numa_node: {op: Lt, value: ["0"]}, operstate: {op: NotIn, value: [down]}}}]}]}
- {tag: pcinv, weight: 6, rules: [{name: pci, matchFeatures: [{feature: pci.device, matchExpressions: {
    vendor: {op: In, value: ["10de"]}, class: {op: In, value: ["0300", "0302"]},
    address: {op: In, value: ["0000:18:00.0", "0000:05:00.0"]}}}]}]}
"""

MIXED_SPEC = """
version: v1alpha1
compatibilities:
- description: GPU training
  tag: gpu
  weight: 100
  rules:
  - name: gpu
    matchFeatures:
    - feature: pci.device
      matchExpressions: {vendor: {op: In, value: ["10de"]}}
    - feature: kernel.loadedmodule
      matchExpressions: {nvidia: {op: Exists}}
  - name: either amd or hugepages
    matchAny:
    - matchFeatures: [{feature: memory.hugepages, matchExpressions: {hugepages-1Gi: {op: Gt, value: ["0"]}}}]
    - matchFeatures: [{feature: kernel.version, matchExpressions: {major: {op: Gt, value: ["4"]}}}]
  - name: either again
    matchAny:
    - matchFeatures: [{feature: pci.device, matchExpressions: {vendor: {op: In, value: ["1002"]}}}]
    - matchFeatures: [{feature: cpu.cpuid, matchExpressions: {AVX2: {op: Exists}}}]
- description: AMD
  tag: amd
  weight: 5
  rules:
  - name: amd
    matchFeatures:
    - feature: pci.device
      matchExpressions: {vendor: {op: In, value: ["1002"]}, device: {op: In, value: ["74a1"]}}
    - feature: gpu.device
      matchExpressions: {vendor: {op: In, value: [amd]}}
- description: anything
  rules:
  - name: kernel
    matchFeatures:
    - feature: kernel.version
      matchExpressions: {major: {op: Ge, value: ["5"]}}
"""


# -- the device attribute maps the drivers publish -------------------------------------------------
class Semver(celtypes.StringType):
    """A DRA version attribute value (semver.MustParse(...).String() in the NVIDIA driver)."""

    @property
    def key(self) -> tuple[int, int, int]:
        return parse_version(str(self))


def _semver(s: Any) -> Semver:
    major, minor, patch = parse_version(str(s))
    return Semver(f"{major}.{minor}.{patch}")


def _compare_to(a: Any, b: Any) -> celtypes.IntType:
    ka, kb = _semver(a).key, _semver(b).key
    return celtypes.IntType((ka > kb) - (ka < kb))


FUNCTIONS = {"semver": _semver, "compareTo": _compare_to}


def _published(feature: str, attrs: dict[str, str]) -> tuple[str, dict[str, dict[str, Any]]] | None:
    """(driver, {domain: {name: value}}) as the vendor driver publishes this device, None if none does."""
    if feature in ("gpu.device", "pci.device"):
        if attrs.get("vendor_id", attrs.get("vendor")) != "10de" or attrs.get("class") not in ("0300", "0302"):
            return None
        nv: dict[str, Any] = {}
        for name, key, kind in (
            ("product", "productName", str),
            ("architecture", "architecture", str),
            ("driver_version", "driverVersion", _semver),
            ("compute_capability", "cudaComputeCapability", _semver),
        ):
            if name in attrs:
                nv[key] = kind(attrs[name])
        std = {"pciBusID": attrs["address"]} if "address" in attrs else {}
        return dra.NVIDIA, {dra.NVIDIA: nv, dra.STANDARD: std}
    if feature == "network.device":
        net: dict[str, Any] = {}
        for name, key, kind in (
            ("name", "ifName", str),
            ("address", "pciAddress", str),
            ("operstate", "state", str),
            ("mtu", "mtu", int),
            ("numa_node", "numaNode", int),
        ):
            if name in attrs:
                net[key] = kind(attrs[name])
        return dra.DRANET, {dra.DRANET: net}
    return None


def _all_instances(feature: str) -> list[Instance]:
    return [i for h in HOSTS for i in fixture_round(h).features.instances.get(feature, InstanceFeature()).elements]


def _devices(feature: str) -> list[dict[str, str]]:
    """Every fixture instance of `feature`, and each again with one attribute removed (absence semantics)."""
    out = []
    for inst in _all_instances(feature):
        out.append(dict(inst.attributes))
        for k in inst.attributes:
            if k not in ("vendor", "vendor_id", "class"):
                out.append({kk: v for kk, v in inst.attributes.items() if kk != k})
    return out


def _activation(driver: str, attributes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    cel_attrs = celtypes.MapType(
        {
            celtypes.StringType(d): celtypes.MapType({celtypes.StringType(k): _cel_value(v) for k, v in a.items()})
            for d, a in attributes.items()
        }
    )
    return {
        "device": celtypes.MapType(
            {celtypes.StringType("driver"): celtypes.StringType(driver), celtypes.StringType("attributes"): cel_attrs}
        )
    }


def _cel_value(v: Any) -> Any:
    if isinstance(v, Semver):
        return v
    if isinstance(v, int):
        return celtypes.IntType(v)
    return celtypes.StringType(v)


def _cel(expression: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(expression), functions=FUNCTIONS)


@functools.lru_cache(maxsize=64)
def _one_set(spec_text: str, set_index: int) -> Spec:
    """The spec parsed, with only its set `set_index` kept: made once per set (parsing and copying the whole
    spec for every device was most of the DRA test's time); evaluate() does not change a spec."""
    spec = parse_spec(spec_text)
    one = copy.deepcopy(spec)
    one.compatibilities = [spec.compatibilities[set_index]]
    return one


def _nodecompat_says(spec_text: str, set_index: int, feature: str, attrs: dict[str, str]) -> bool:
    """nodecompat's verdict for one set on a node holding only this one device."""
    one = _one_set(spec_text, set_index)
    f = Features()
    f.instances[feature] = InstanceFeature([Instance(dict(attrs))])
    return evaluate(one, f).compatible


# -- DRA -----------------------------------------------------------------------------------------------
def test_every_dra_selector_compiles_and_agrees_with_nodecompat_on_the_fixture_devices() -> None:
    spec = parse_spec(DEVICE_SPEC)
    out = dra.translate_dra(spec, "devices")
    # Only the gpu.device terms without a vendor are noted: NFD would take other vendors' GPUs there too.
    nvidia_only = {u.where.split(".")[0] for u in out.untranslated}
    assert [u.what for u in out.untranslated] == ["gpu.device without vendor"] * 4
    assert nvidia_only == {"compatibilities[1]", "compatibilities[2]", "compatibilities[3]", "compatibilities[4]"}
    assert len(out.selectors) == len(spec.compatibilities)
    classes = {o["metadata"]["name"]: o for o in out.objects if o["kind"] == "DeviceClass"}
    checked = {True: 0, False: 0}
    for sel in out.selectors:
        term = spec.compatibilities[sel.set_index].rules[0].match_features[0]
        klass = _cel(classes[dra.class_name(sel.driver)]["spec"]["selectors"][0]["cel"]["expression"])
        program = _cel(sel.expression)
        for attrs in _devices(term.feature):
            published = _published(term.feature, attrs)
            if published is None:
                if f"compatibilities[{sel.set_index}]" in nvidia_only:
                    continue  # listed as untranslated: other vendors' GPUs are not published by gpu.nvidia.com
                got = False
            else:
                act = _activation(*published)
                got = bool(klass.evaluate(act)) and bool(program.evaluate(act))
            want = _nodecompat_says(DEVICE_SPEC, sel.set_index, term.feature, attrs)
            assert got == want, (sel.expression, attrs)
            checked[want] += 1
    assert checked[True] > 10 and checked[False] > 10, checked  # both answers were really exercised


def test_dra_objects_validate_and_sets_are_first_available_alternatives_in_weight_order() -> None:
    spec = parse_spec(DEVICE_SPEC)
    out = dra.translate_dra(spec, "devices")
    for o in out.objects:
        kubernetes_validate.validate(o, K8S, strict=True)
    rct = next(o for o in out.objects if o["kind"] == "ResourceClaimTemplate")
    reqs = {r["name"]: r for r in rct["spec"]["spec"]["devices"]["requests"]}
    assert [s["name"] for s in reqs["gpu-0"]["firstAvailable"]] == [
        "h100",
        "hopper",
        "oldgpu",
        "notampere",
        "cc90",
        "pcinv",
    ]
    assert [s["name"] for s in reqs["dra-0"]["firstAvailable"]] == ["fastnic", "ensnuma0", "smallmtu", "nonuma"]
    assert {s["deviceClassName"] for s in reqs["dra-0"]["firstAvailable"]} == {"nodecompat-dra-net"}
    h100 = reqs["gpu-0"]["firstAvailable"][0]["selectors"][0]["cel"]["expression"]
    assert 'device.attributes["gpu.nvidia.com"].driverVersion.compareTo(semver("535.0.0")) >= 0' in h100
    assert 'device.attributes["gpu.nvidia.com"].productName in ["NVIDIA H100 80GB HBM3"]' in h100


def test_dra_lists_every_expression_without_an_equivalent_with_why() -> None:
    spec = parse_spec(MIXED_SPEC)
    out = dra.translate_dra(spec, "mixed")
    why = {u.where: u.why for u in out.untranslated}
    assert "node-level fact" in why["compatibilities[0].rules[0].matchFeatures[1]"]  # kernel.loadedmodule
    assert "matchAny" in why["compatibilities[0].rules[1].matchAny[0].matchFeatures[0]"]
    assert "10de" in why["compatibilities[1].rules[0].matchFeatures[0].matchExpressions.vendor"]  # AMD pci
    assert "nvidia" in why["compatibilities[1].rules[0].matchFeatures[1].matchExpressions.vendor"]  # AMD gpu
    assert "node-level fact" in why["compatibilities[2].rules[0].matchFeatures[0]"]
    # The NVIDIA pci.device term is translated: a GPU request with one alternative (`exactly`).
    rct = next(o for o in out.objects if o["kind"] == "ResourceClaimTemplate")
    (req,) = rct["spec"]["spec"]["devices"]["requests"]
    assert req["exactly"]["deviceClassName"] == "nodecompat-gpu-nvidia-com"
    kubernetes_validate.validate(rct, K8S, strict=True)
    with pytest.raises(TranslateError, match="no device-level rule"):
        dra.translate_dra(
            parse_spec(
                MIXED_SPEC.split("- description: anything")[0].split("- description: GPU")[0]
                + "- {rules: [{name: k, matchFeatures: [{feature: kernel.version}]}]}\n"
            ),
            "x",
        )


# -- NFD ----------------------------------------------------------------------------------------------------
def _as_spec(rule: dict[str, Any]) -> str:
    body = {k: v for k, v in rule.items() if k in ("matchFeatures", "matchAny")}
    return yaml.safe_dump({"version": "v1alpha1", "compatibilities": [{"rules": [{"name": "merged", **body}]}]})


def test_node_feature_rule_labels_each_set_and_decides_as_the_spec_on_every_host() -> None:
    spec = parse_spec(MIXED_SPEC)
    obj = nfd.node_feature_rule(spec, "train")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # NFD's CRD schema is not bundled; the
        kubernetes_validate.validate(obj, K8S, strict=True)  # rules' bodies are checked by reading them back
    rules = obj["spec"]["rules"]
    assert [r["labels"] for r in rules] == [
        {"nodecompat.io/train.gpu": "true"},
        {"nodecompat.io/train.amd": "true"},
        {"nodecompat.io/train.set2": "true"},
    ]
    assert len(rules[0]["matchAny"]) == 4  # two matchAny lists of 2, ANDed: their cross product
    outcomes = set()
    for host in HOSTS:
        features = fixture_round(host).features
        for i, rule in enumerate(rules):
            one = copy.deepcopy(spec)
            one.compatibilities = [spec.compatibilities[i]]
            want = evaluate(one, features).compatible
            assert evaluate(parse_spec(_as_spec(rule)), features).compatible == want, (host, i)
            outcomes.add(want)
    assert outcomes == {True, False}


def test_node_feature_groups_one_per_set_and_label_affinity() -> None:
    spec = parse_spec(MIXED_SPEC)
    groups = nfd.node_feature_groups(spec, "train")
    assert [g["kind"] for g in groups] == ["NodeFeatureGroup"] * 3
    assert all(len(g["spec"]["featureGroupRules"]) == 1 for g in groups)  # NFD ORs group rules: one per set
    assert (
        groups[0]["spec"]["featureGroupRules"][0]["matchFeatures"]
        == nfd.node_feature_rule(spec, "train")["spec"]["rules"][0]["matchFeatures"]
    )
    aff = nfd.label_affinity(spec, "train")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "x"}], "affinity": aff},
    }
    kubernetes_validate.validate(pod, K8S, strict=True)
    pref = aff["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [(p["weight"], p["preference"]["matchExpressions"][0]["key"]) for p in pref] == [
        (100, "nodecompat.io/train.gpu"),
        (5, "nodecompat.io/train.amd"),
        (1, "nodecompat.io/train.set2"),
    ]


def test_back_references_and_huge_cross_products_are_refused_not_mistranslated() -> None:
    backref = parse_spec("""
version: v1alpha1
compatibilities:
- rules:
  - {name: a, vars: {ok: "true"}, matchFeatures: [{feature: kernel.version}]}
  - {name: b, matchFeatures: [{feature: rule.matched, matchExpressions: {ok: {op: IsTrue}}}]}
""")
    with pytest.raises(TranslateError, match=r"rule\.matched"):
        nfd.node_feature_rule(backref, "x")
    alts = "[" + ", ".join(f"{{matchFeatures: [{{feature: f{i}.x}}]}}" for i in range(20)) + "]"
    wide = parse_spec(
        "version: v1alpha1\ncompatibilities:\n- rules:\n"
        + "".join(f"  - {{name: r{j}, matchAny: {alts}}}\n" for j in range(2))
    )
    with pytest.raises(TranslateError, match="400 alternatives"):
        merge_set(wide.compatibilities[0], "compatibilities[0]")


def test_cli_translate_prints_yaml_and_lists_untranslated(tmp_path: Path) -> None:
    spec_file = tmp_path / "train.yaml"
    spec_file.write_text(MIXED_SPEC)
    cmd = [sys.executable, "-m", "nodecompat.clients.cli", "translate", "--spec", str(spec_file)]
    r = subprocess.run([*cmd, "--to", "nodefeaturerule"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert docs[0]["kind"] == "NodeFeatureRule" and "nodecompat.io/train.gpu: 'true'" in r.stdout
    comment = [line for line in r.stdout.splitlines() if line.startswith("#")]
    assert any(line.strip("# ") == "- key: nodecompat.io/train.gpu" for line in comment)  # the affinity
    assert yaml.safe_load("\n".join(line[4:] for line in comment[1:]))["nodeAffinity"]
    r = subprocess.run([*cmd, "--to", "dra"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [d["kind"] for d in yaml.safe_load_all(r.stdout) if d] == ["DeviceClass", "ResourceClaimTemplate"]
    assert "# not translated: compatibilities[2].rules[0].matchFeatures[0]: kernel.version: node-level" in r.stderr
    r = subprocess.run(
        [*cmd, "--to", "nodefeaturegroup", "--name", "Bad Name!"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "nodecompat-bad-name-gpu" in r.stdout
    spec_file.write_text("version: v1alpha1\ncompatibilities: 3\n")
    r = subprocess.run([*cmd, "--to", "dra"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid spec" in r.stderr
