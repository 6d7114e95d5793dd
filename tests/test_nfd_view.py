"""NFD's exact view (issue 9 item 4) and unknown-is-not-absent (item 5), in the engine, on the fixture hosts.

The specs here get a different verdict in default and NFD mode precisely because of a nodecompat
addition: NFD publishes no pci.device `numa_node`/`address`/`driver`, no `hugepages-<size>.total`, no
memory.size (source/pci/utils.go mandatoryDevAttrs/optionalDevAttrs, source/memory/memory.go
detectHugePages; see test_nfd_marker.NFD_PUBLISHES), so NFD answers as if they were absent.
"""

from __future__ import annotations

import json
from functools import cache

import pytest
from support_hosts import HOST_NAMES, fixture_host
from test_nfd_marker import NFD_PUBLISHES

from nodecompat.engine.evaluate import evaluate
from nodecompat.engine.spec import parse_spec
from nodecompat.engine.verdict import (
    FACT_ABSENT,
    FACT_NFD_HIDDEN,
    FACT_NOT_PROVIDED,
    FACT_PROBE_FAILED,
    FACT_UNSPECIFIED,
    Verdict,
)
from nodecompat.features import Features
from nodecompat.probes.catalog import FeatureCatalog
from nodecompat.probes.runner import ProbeRound, probe_once


@cache
def _round(host: str) -> ProbeRound:
    return probe_once(fixture_host(host))


def _spec(term: str) -> str:
    return f"""\
version: v1alpha1
compatibilities:
- description: one term
  rules:
  - name: r
    matchFeatures:
{term}
"""


def _eval(host: str, term: str, *, nfd: bool) -> Verdict:
    rnd = _round(host)
    return evaluate(
        parse_spec(_spec(term), nfd_compat=nfd), rnd.features, unknown=rnd.unknown_features(),
        catalog=FeatureCatalog.registered(), nfd_view=nfd,
    )


def _nfd_oracle(f: Features) -> Features:
    """What NFD would publish, from NFD's own list (not from the probes' markers)."""
    import re

    def keep_attr(feature: str, name: str) -> bool:
        names = NFD_PUBLISHES[feature][0]
        if names is None:
            return True
        pats = [re.compile(re.sub(r"<[^<>]+>", "[^.]+", re.escape(n).replace(r"\<", "<").replace(r"\>", ">")))
                for n in names]
        return any(p.fullmatch(name) for p in pats)

    out = Features()
    for n, fl in f.flags.items():
        if n in NFD_PUBLISHES:
            out.add_flags(n, fl.elements)
    for n, a in f.attributes.items():
        if n in NFD_PUBLISHES:
            out.add_attributes(n, {k: v for k, v in a.elements.items() if keep_attr(n, k)})
    for n, i in f.instances.items():
        if n in NFD_PUBLISHES:
            out.set_instances(n, ({k: v for k, v in x.attributes.items() if keep_attr(n, k)} for x in i.elements))
    return out


# (host, term, default-mode compatible, NFD-mode compatible, the hidden feature/element)
DIFFERING = [
    # matchName over pci.device attribute names: NFD's pci.device has no numa_node
    ("h100-server", "    - feature: pci.device\n      matchName: {op: In, value: [numa_node]}\n",
     True, False, ("pci.device", "numa_node")),
    # DoesNotExist on an added attribute: NFD has no hugepages-1Gi.total, so it "does not exist"
    ("h100-server", "    - feature: memory.hugepages\n      matchExpressions:\n"
     "        hugepages-1Gi.total: {op: DoesNotExist}\n", False, True, ("memory.hugepages", "hugepages-1Gi.total")),
    # Exists on an added instance attribute
    ("amd-mi300", "    - feature: pci.device\n      matchExpressions:\n        driver: {op: In, value: [amdgpu]}\n",
     True, False, ("pci.device", "driver")),
    # a whole added feature
    ("plain-vm", "    - feature: memory.size\n      matchExpressions:\n        total_bytes: {op: Exists}\n",
     True, False, ("memory.size", "")),
    # DoesNotExist on an added instance attribute: every device has numa_node here; in NFD's view none does
    ("plain-vm", "    - feature: pci.device\n      matchExpressions:\n        numa_node: {op: DoesNotExist}\n",
     False, True, ("pci.device", "numa_node")),
]


@pytest.mark.parametrize(("host", "term", "default", "nfd", "hidden"), DIFFERING)
def test_verdict_differs_between_modes_because_of_an_addition(
    host: str, term: str, default: bool, nfd: bool, hidden: tuple[str, str]
) -> None:
    d = _eval(host, term, nfd=False)
    n = _eval(host, term, nfd=True)
    assert (d.compatible, n.compatible) == (default, nfd)
    assert not d.nfd_view and n.nfd_view
    assert d.unseen_names == []  # in default mode the addition is a provided name
    assert [(u.feature, u.element, u.fact) for u in n.unseen_names] == [(*hidden, FACT_NFD_HIDDEN)]
    facts = {e.fact for t in n.sets[0].rules[0].match_features for e in t.expressions}
    facts |= {t.fact for t in n.sets[0].rules[0].match_features}
    assert FACT_NFD_HIDDEN in facts
    # NFD's answer byte for byte: the same spec over the features NFD's own list keeps
    rnd = _round(host)
    oracle = evaluate(parse_spec(_spec(term), nfd_compat=True), _nfd_oracle(rnd.features))
    assert n.nfd_json == oracle.nfd_json and n.compatible == oracle.compatible


@pytest.mark.parametrize("host", HOST_NAMES)
def test_nfd_view_is_exactly_nfds_list(host: str) -> None:
    f = _round(host).features
    view = FeatureCatalog.registered().nfd_view(f)
    assert json.dumps(view.to_nfd(), sort_keys=True) == json.dumps(_nfd_oracle(f).to_nfd(), sort_keys=True)
    assert view.to_nfd() != f.to_nfd()  # every fixture host has some addition


def test_unknown_feature_is_not_absent_and_keeps_nfds_verdict() -> None:
    for nfd in (False, True):
        v = _eval("h100-server", "    - feature: kernel.versoin\n      matchExpressions:\n"
                  "        major: {op: Gt, value: ['4']}\n", nfd=nfd)
        assert not v.compatible  # NFD: an absent feature does not match
        term = v.sets[0].rules[0].match_features[0]
        assert (term.fact, term.suggestion) == (FACT_NOT_PROVIDED, "kernel.version")
        assert term.expressions[0].fact == FACT_NOT_PROVIDED
        assert "no probe provides `kernel.versoin` — did you mean `kernel.version`?" in term.expressions[0].detail
        assert [(u.feature, u.element, u.suggestion) for u in v.unseen_names] == [
            ("kernel.versoin", "", "kernel.version")
        ]


def test_unknown_attribute_under_does_not_exist_passes_as_in_nfd_but_says_so() -> None:
    v = _eval("plain-vm", "    - feature: kernel.version\n      matchExpressions:\n"
              "        mjaor: {op: DoesNotExist}\n", nfd=False)
    assert v.compatible  # NFD's answer: the element is absent
    e = v.sets[0].rules[0].match_features[0].expressions[0]
    assert (e.matched, e.fact, e.suggestion) == (True, FACT_NOT_PROVIDED, "major")
    assert v.unseen_names[0].message == "no probe provides `mjaor` of `kernel.version` — did you mean `major`?"


def test_node_lacks_it_is_kept_for_provided_names() -> None:
    # plain-vm has no GPU: the gpu probe provides gpu.driver, this node does not have it
    v = _eval("plain-vm", "    - feature: gpu.driver\n      matchExpressions:\n"
              "        name: {op: In, value: [nvidia]}\n", nfd=False)
    term = v.sets[0].rules[0].match_features[0]
    assert not v.compatible and term.fact == FACT_ABSENT and v.unseen_names == []
    assert "not present on this node" in term.expressions[0].detail
    # a declared attribute this node lacks (no SR-IOV on plain-vm's NIC)
    v = _eval("plain-vm", "    - feature: network.device\n      matchExpressions:\n"
              "        sriov_totalvfs: {op: Exists}\n", nfd=True)
    e = v.sets[0].rules[0].match_features[0].expressions[0]
    assert (e.fact, v.unseen_names) == (FACT_ABSENT, [])
    # present and matched: nothing to say
    v = _eval("plain-vm", "    - feature: kernel.version\n      matchExpressions:\n        major: {op: Exists}\n",
              nfd=True)
    assert v.compatible and v.sets[0].rules[0].match_features[0].expressions[0].fact == FACT_UNSPECIFIED


def test_probe_failure_is_its_own_fact() -> None:
    f = _round("plain-vm").features
    v = evaluate(parse_spec(_spec("    - feature: pci.device\n      matchName: {op: Exists}\n")), f,
                 unknown={"pci.device": "probe pci failed: boom"}, catalog=FeatureCatalog.registered())
    term = v.sets[0].rules[0].match_features[0]
    assert term.unknown and term.fact == FACT_PROBE_FAILED and term.expressions[0].fact == FACT_PROBE_FAILED


def test_names_present_in_a_snapshot_are_facts_even_when_no_probe_declares_them() -> None:
    f = Features()
    f.add_instance("usb.device", {"class": "0e", "vendor": "046d", "device": "0825"})
    v = evaluate(parse_spec(_spec("    - feature: usb.device\n      matchExpressions:\n"
                                  "        vendor: {op: In, value: ['046d']}\n        serial: {op: DoesNotExist}\n")),
                 f, catalog=FeatureCatalog.registered(), nfd_view=True)
    assert v.compatible and v.unseen_names == []


def test_verdict_round_trips_through_the_proto_and_json() -> None:
    from nodecompat import wire
    from nodecompat.v1 import validation_pb2

    v = _eval("h100-server", "    - feature: kernel.versoin\n      matchName: {op: Exists}\n", nfd=True)
    msg = wire.to_message(v, validation_pb2.ValidationReport)
    assert msg.nfd_view and msg.unseen_names[0].fact == validation_pb2.FACT_STATUS_NOT_PROVIDED
    term = msg.sets[0].rules[0].match_features[0]
    assert term.fact == validation_pb2.FACT_STATUS_NOT_PROVIDED and term.suggestion == "kernel.version"
    back = wire.from_message(msg, Verdict, compatible=v.compatible, score=v.score)
    assert back.to_dict() == v.to_dict()
    assert Verdict.from_dict(json.loads(json.dumps(v.to_dict()))).to_dict() == v.to_dict()


def test_nfd_mode_follows_the_spec_when_not_said() -> None:
    """Callers that only parse in NFD mode (the fleet inventory, what-if) get NFD's view too."""
    term = "    - feature: pci.device\n      matchName: {op: In, value: [numa_node]}\n"
    f = _round("h100-server").features
    assert not evaluate(parse_spec(_spec(term), nfd_compat=True), f).compatible
    assert evaluate(parse_spec(_spec(term)), f).compatible
    assert evaluate(parse_spec(_spec(term), nfd_compat=True), f, nfd_view=False).compatible


def test_a_spec_naming_thousands_of_unknown_names_gets_a_bounded_report() -> None:
    """Hostile input: 1,000 made-up attribute names in one matchName, and 300 made-up features."""
    from nodecompat.engine.unseen import MAX_DETAIL_NAMES, MAX_UNSEEN

    names = ", ".join(f"attr{i}" for i in range(1000))
    terms = f"    - feature: pci.device\n      matchName: {{op: In, value: [{names}]}}\n"
    terms += "".join(f"    - feature: made.up{i}\n      matchName: {{op: Exists}}\n" for i in range(300))
    v = _eval("plain-vm", terms, nfd=False)
    assert not v.compatible and len(v.unseen_names) == MAX_UNSEEN
    first = v.sets[0].rules[0].match_features[0].expressions[0]
    assert first.fact == FACT_NOT_PROVIDED and first.detail.count("no probe provides") == MAX_DETAIL_NAMES
    assert "and 995 more names nobody provides" in first.detail
    assert f"and {1300 - MAX_UNSEEN} more names no probe provides" in v.warnings
