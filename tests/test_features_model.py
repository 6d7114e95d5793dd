"""The feature model and NFD's wire format: round trip, and malformed snapshots refused with a path."""

from __future__ import annotations

import json

import pytest

from nodecompat.features import Features

WIRE = {
    "flags": {"kernel.loadedmodule": {"elements": {"nvidia": {}, "vfio_pci": {}}}},
    "attributes": {"kernel.version": {"elements": {"major": "6", "minor": "8", "revision": ""}}},
    "instances": {"pci.device": {"elements": [{"attributes": {"class": "0302", "vendor": "10de"}}]}},
}


def test_round_trip_is_exact() -> None:
    f = Features.from_nfd(WIRE)
    assert f.flags["kernel.loadedmodule"].elements == {"nvidia", "vfio_pci"}
    assert f.to_nfd() == WIRE
    assert json.loads(json.dumps(f.to_nfd())) == WIRE


def test_go_scalars_are_rendered_like_percent_v_and_missing_parts_are_empty() -> None:
    f = Features.from_nfd({"attributes": {"a.b": {"elements": {"n": 3, "t": True, "s": "x"}}},
                           "flags": {"c.d": {"elements": None}}})
    assert f.attributes["a.b"].elements == {"n": "3", "t": "true", "s": "x"}
    assert f.flags["c.d"].elements == set() and "c.d" in f.names()


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ([], "features: expected an object"),
        ({"flags": []}, "features.flags: expected an object"),
        ({"flags": {"a.b": 3}}, "features.flags.a.b: expected an object"),
        ({"flags": {"a.b": {"elements": "x"}}}, "features.flags.a.b.elements: expected an object of names"),
        ({"attributes": {"a.b": {"elements": {"k": None}}}}, "features.attributes.a.b.elements.k: expected a string"),
        ({"attributes": {"a.b": {"elements": {"k": [1]}}}}, "features.attributes.a.b.elements.k: expected a string"),
        ({"instances": {"p.d": {"elements": [5]}}}, "features.instances.p.d.elements[0]: expected an object"),
        ({"instances": {"p.d": {"elements": [{"attributes": {"class": None}}]}}},
         "features.instances.p.d.elements[0].attributes.class: expected a string value, got null"),
        ({"instances": {"p.d": {"elements": {}}}}, "features.instances.p.d.elements: expected a list"),
    ],
)
def test_malformed_wire_data_is_refused_with_its_path(data: object, where: str) -> None:
    with pytest.raises(ValueError) as err:
        Features.from_nfd(data)  # type: ignore[arg-type]
    assert where in str(err.value)


def test_subset_and_filtered() -> None:
    f = Features.from_nfd(WIRE)
    assert f.subset(["kernel.version"]).names() == {"kernel.version"}
    assert f.filtered(["kernel."]).names() == {"kernel.version", "kernel.loadedmodule"}
    assert f.filtered([]).to_nfd() == WIRE


def test_validate_refuses_a_malformed_snapshot_with_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    from pathlib import Path

    spec = Path(__file__).resolve().parents[1] / "examples" / "gpu-node.yaml"
    for bad, words in (
        ({**WIRE, "probes": "x"}, "`probes` must be a list"),
        ({"instances": {"pci.device": {"elements": [{"attributes": {"class": None}}]}}}, "got null"),
    ):
        snap = tmp_path / "snap.json"
        snap.write_text(json.dumps(bad))
        done = subprocess.run(
            [sys.executable, "-m", "nodecompat.clients.cli", "validate", "--spec", str(spec), "--features", str(snap)],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 2 and words in done.stderr and done.stdout == ""


def test_validate_with_a_missing_host_root_is_an_error_not_a_verdict(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    from pathlib import Path

    spec = Path(__file__).resolve().parents[1] / "examples" / "gpu-node.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "nodecompat.clients.cli", "validate", "--spec", str(spec), "--host-root",
         str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "is not a directory" in done.stderr and done.stdout == ""


def test_built_values_are_plain_strings_whatever_was_passed() -> None:
    """add_attributes / add_instance / set_instances keep a dict of their own with str values: a dict of
    str copied (a later change of the caller's dict does not reach the features), other values, str
    subclasses and other Mappings converted one by one as before."""
    from collections import OrderedDict

    class Tagged(str):
        pass

    f = Features()
    given = {"a": "1", "b": "2"}
    f.add_attributes("x.plain", given)
    given["a"] = "changed"
    f.add_attributes("x.mixed", {"n": 3, "t": True, "s": Tagged("v")})  # type: ignore[dict-item]
    f.add_instance("x.inst", OrderedDict(k=Tagged("w")))
    f.set_instances("x.set", [{"id": 7}, {"id": "8"}])  # type: ignore[dict-item]
    assert f.attributes["x.plain"].elements == {"a": "1", "b": "2"}
    mixed = f.attributes["x.mixed"].elements
    assert mixed == {"n": "3", "t": "True", "s": "v"} and all(type(v) is str for v in mixed.values())
    inst = f.instances["x.inst"].elements[0].attributes
    assert inst == {"k": "w"} and type(inst) is dict and type(inst["k"]) is str
    assert [i.attributes for i in f.instances["x.set"].elements] == [{"id": "7"}, {"id": "8"}]
