"""local probe: features.d in the h100 tree (exact), file rules, directives, hostile input."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from support_hosts import attrs, copy_fixture, fixture_host, run

from nodecompat.hostroot import HostRoot
from nodecompat.probes.local import MAX_FILE_SIZE, LocalProbe, parse_feature_file

GFD = {
    "nvidia.com/gpu.count": "8",
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    "nvidia.com/gpu.memory": "81559",
    "nvidia.com/cuda.driver-version.full": "550.54.15",
}


def test_h100_exact():
    wire, out = run(LocalProbe(), fixture_host("h100-server"))
    # gfd: timestamp is feature-only (# +no-label); site: label-only is label-only, expired-key expired;
    # .hidden is ignored.
    assert attrs(wire, "local.feature") == {**GFD, "nvidia.com/gfd.timestamp": "1709700000", "rack": "r12"}
    assert attrs(wire, "local.label") == {**GFD, "rack": "r12", "label-only": "yes"}
    assert out.notes == []


def test_other_fixtures_have_no_features_d():
    for name in ("amd-mi300", "plain-vm"):
        wire, out = run(LocalProbe(), fixture_host(name))
        assert attrs(wire, "local.feature") == {} and attrs(wire, "local.label") == {}
        assert out.notes == [
            "feature file directory /etc/kubernetes/node-feature-discovery/features.d does not exist"
        ]


def test_custom_features_d_location(tmp_path):
    (tmp_path / "fd").mkdir()
    (tmp_path / "fd" / "a").write_text("x=1\n")
    wire, _ = run(LocalProbe(), HostRoot(tmp_path, features_d="/fd"))
    assert attrs(wire, "local.feature") == {"x": "1"}


def test_file_rules(tmp_path):
    host = copy_fixture("h100-server", tmp_path)
    fd = host.path(host.features_d)
    (fd / "zz-override").write_text("rack=r13\n")  # later file wins
    (fd / "big").write_text("big=1\n" + "#" * MAX_FILE_SIZE)
    (fd / "subdir").mkdir()
    (fd / "subdir" / "inner").write_text("inner=1\n")
    os.symlink("/nonexistent/target", fd / "dangling")
    (fd / "binary").write_bytes(b"\xff\xfe=\x00\nok=1\n")
    wire, out = run(LocalProbe(), host)
    feats = attrs(wire, "local.feature") or {}
    assert feats["rack"] == "r13" and feats["ok"] == "1"
    assert "big" not in feats and "inner" not in feats
    big_note = f"{host.features_d}/big: ignored, {6 + MAX_FILE_SIZE} bytes > {MAX_FILE_SIZE}"
    assert big_note in out.notes
    assert any(n.endswith("/dangling: cannot stat: No such file or directory") for n in out.notes)


def test_directives():
    now = datetime(2025, 6, 1, tzinfo=UTC)
    text = "\n".join(
        [
            "a",
            "b=2",
            "# plain comment",
            "# +no-feature",
            "c=3",
            "d=4",
            "# +no-label",
            "a=label-gone",
            "# +expiry-time=2030-01-01T00:00:00Z",
            "e=5",
            "# +expiry-time=2020-01-01T00:00:00+02:00",
            "f=6",
            "# +bogus",
            "# +expiry-time=yesterday",
            "# +expiry-time",
            "  g = 7  ",
            "",
        ]
    )
    parsed = parse_feature_file(text, "t", now=now)
    # expiry 2020 stays in force after the bad directives, so g is dropped too.
    assert parsed.features == {"a": "label-gone", "b": "2", "d": "4", "e": "5"}
    assert parsed.labels == {"b": "2", "c": "3", "d": "4", "e": "5"}
    assert parsed.errors == [
        "t:13: unknown feature file directive 'bogus'",
        "t:14: bad expiry-time: not an RFC3339 time: 'yesterday'",
        "t:15: expiry-time directive needs a value",
    ]


def test_value_edge_cases():
    parsed = parse_feature_file("k=v=w\nempty=\n=novalue\nspaced key = x \n", now=datetime.now(UTC))
    assert parsed.features == {"k": "v=w", "empty": "", "": "novalue", "spaced key ": " x"}


def test_expiry_without_zone_is_an_error():
    parsed = parse_feature_file("# +expiry-time=2030-01-01T00:00:00\nk=1\n", "f")
    assert parsed.features == {"k": "1"}
    assert parsed.errors == [
        "f:1: bad expiry-time: RFC3339 time without a zone offset: '2030-01-01T00:00:00'"
    ]
