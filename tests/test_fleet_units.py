"""Fleet building blocks on their own: nodes-file parsing, inventory (leases, DNS, priorities), the
reasons picked from a report, the summary's ranking, and the CLI's selector and table."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodecompat.clients.cmd_fleet import parse_selector, render_table
from nodecompat.clients.fleet_client import FleetAnswer, FleetSummary, NodeVerdict
from nodecompat.server.fleet.aggregator import deadline_margin, failure_reasons, summarize
from nodecompat.server.fleet.fanout import ChannelPool, FanoutConfig
from nodecompat.server.inventory.fleet_nodes import (
    MAX_LABEL_VALUE,
    AddressInUse,
    NameInUse,
    NodeInventory,
    NodesFileError,
    NotRegistrant,
    RegistrationsFull,
    is_wildcard_host,
    parse_nodes_file,
    split_address,
    system_resolver,
)
from nodecompat.v1 import fleet_pb2, validation_pb2


def test_nodes_file_forms() -> None:
    yaml_list = "- {name: a, address: '10.0.0.1:50051', labels: {gpu: nvidia, count: 8, ok: true}}\n- address: h:1\n"
    nodes = parse_nodes_file(yaml_list, "nodes.yaml")
    assert [(n.name, n.address, dict(n.labels)) for n in nodes] == [
        ("a", "10.0.0.1:50051", {"gpu": "nvidia", "count": "8", "ok": "true"}),
        ("h:1", "h:1", {}),  # name defaults to the address
    ]
    wrapped = parse_nodes_file('{"nodes": [{"name": "b", "address": "[::1]:7"}]}', "nodes.json")
    assert [(n.name, n.address) for n in wrapped] == [("b", "[::1]:7")]
    assert parse_nodes_file("", "empty.yaml") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {name: a, address: x:1\n", "nodes.yaml:2:1: not valid YAML"),
        ("nodes: 3", "expected a list of nodes"),
        ("{other: []}", "a mapping with only `nodes`"),
        ("- 42", "entry 0: expected a mapping"),
        ("- {name: a}", "entry 0: `address` (HOST:PORT) is required"),
        ("- {name: a, address: 'h:0'}", "entry 0: address 'h:0': port must be 1-65535"),
        ("- {name: a, address: 'fe80::1:80'}", "IPv6 as [ADDR]:PORT"),
        (
            "- {name: a, address: 'h:1'}\n- {name: a, address: 'h:2'}",
            "entry 1: name 'a' already used by entry 0",
        ),
        ("- {name: a, address: 'h:1', labels: [x]}", "entry 0: `labels` must be a mapping"),
        ("- {name: a, address: 'h:1', labls: {}}", "entry 0: unknown field(s) labls"),
        ("- {name: a, address: 'h:1', labels: {k: [1]}}", "label 'k': keys and values must be strings"),
        (
            "- {name: a, address: 'h:1'}\n- {name: b, address: 'h:1'}",
            "entry 1: address h:1 already used by entry 0 ('a')",
        ),
        ("- {name: ' a', address: 'h:1'}", "entry 0: `name` must be printable characters"),
        (f"- {{name: a, address: 'h:1', labels: {{k: {'v' * (MAX_LABEL_VALUE + 1)}}}}}", "at most 253 printable"),
        ("- {name: a, address: 'h:1', labels: {'': v}}", "label key '': must be 1-317"),
    ],
)
def test_nodes_file_errors_are_located(text: str, message: str) -> None:
    with pytest.raises(NodesFileError) as err:
        parse_nodes_file(text, "nodes.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("nodes.yaml")


# Deeply nested text in every form YAML and JSON nest in (a recursive parser dies on these).
NESTINGS = ["[", "{a: ", "- ", '{"a": ', "[{a: ", "? "]
deep_text = st.builds(
    lambda opener, levels, tail: opener * levels + tail,
    st.sampled_from(NESTINGS),
    st.integers(min_value=50, max_value=200_000),
    st.sampled_from(["", "x", "]" * 10, "}", "\n- {name: a, address: 'h:1'}"]),
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=300), deep_text))
def test_nodes_file_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(NodesFileError):  # anything else (TypeError, RecursionError...) fails the test
        parse_nodes_file(text, "fuzz.yaml")


@pytest.mark.parametrize("opener", [o for o in NESTINGS if o != "? "])  # `? ?`: refused as a complex key
def test_deeply_nested_nodes_file_is_a_located_error(opener: str) -> None:
    with pytest.raises(NodesFileError, match=r"^deep\.yaml(:\d+)?: nesting deeper than \d+ levels"):
        parse_nodes_file(opener * 200_000, "deep.yaml")


def test_a_deeply_nested_edit_keeps_the_previous_nodes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "nodes.yaml"
    path.write_text("- {name: a, address: 'h:1'}\n")
    inv = NodeInventory(nodes_file=path)
    inv.load()
    path.write_text("[" * 200_000)
    with caplog.at_level("ERROR", logger="nodecompat.server.inventory.fleet_nodes"):
        assert [n.name for n in inv.nodes()] == ["a"]  # raised RecursionError before: every call failed
        assert [n.name for n in inv.nodes()] == ["a"]
    assert "nesting deeper" in inv.file_error and str(path) in inv.file_error
    logged = [r.getMessage() for r in caplog.records if "keeping the previous 1 node(s)" in r.getMessage()]
    assert len(logged) == 1 and "nesting deeper" in logged[0]  # logged once per bad edit, not per lookup
    path.write_text("- {name: b, address: 'h:2'}\n")
    assert [n.name for n in inv.nodes()] == ["b"] and inv.file_error == ""


def test_aggregator_cli_refuses_a_deeply_nested_nodes_file(tmp_path: Path) -> None:
    deep = tmp_path / "nodes.yaml"
    deep.write_text("[" * 200_000)
    cli = [sys.executable, "-m", "nodecompat.clients.cli", "aggregator", "--listen", "127.0.0.1:0"]
    r = subprocess.run(
        [*cli, "--nodes-file", str(deep)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "RecursionError" not in r.stderr
    assert f"{deep}: nesting deeper than" in r.stderr


def test_split_address() -> None:
    assert split_address("node-1.example:50051") == ("node-1.example", 50051)
    assert split_address("[2001:db8::1]:443") == ("2001:db8::1", 443)
    for bad in ("nohost", ":80", "h:", "h:x", "[::1]80", "h:70000"):
        with pytest.raises(ValueError):
            split_address(bad)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_leases_lapse_and_renew() -> None:
    clock = Clock()
    inv = NodeInventory(lease_ttl=10.0, clock=clock)
    assert inv.register("n1", "10.0.0.1:1", {"site": "edge"}, 0) == 10.0  # 0: the default lease
    assert inv.register("n2", "10.0.0.2:1", {}, 0.01) == 1.0  # clamped to the minimum
    clock.now += 5
    inv.register("n1", "10.0.0.1:1", {"site": "edge"}, 0)  # heartbeat renews
    assert [n.name for n in inv.nodes()] == ["n1"]  # n2 lapsed
    assert inv.nodes()[0].source == "registered" and inv.nodes({"site": "edge"})[0].name == "n1"
    clock.now += 9.9
    assert [n.name for n in inv.nodes()] == ["n1"]
    clock.now += 0.2
    assert inv.nodes() == []
    inv.register("n3", "10.0.0.3:1", {}, 30)
    assert inv.deregister("n3") and not inv.deregister("n3") and inv.nodes() == []
    for bad in (("", "h:1"), ("x", "no-port"), ("x", "h:0")):
        with pytest.raises(ValueError):
            inv.register(bad[0], bad[1], {}, 0)


def test_dns_is_re_resolved_and_a_failed_lookup_keeps_the_last_answer(tmp_path: Path) -> None:
    answers: list[list[str] | OSError] = [
        ["10.0.0.1:5", "10.0.0.2:5"],
        ["10.0.0.2:5", "10.0.0.3:5"],
        OSError("SERVFAIL"),
    ]

    def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("daemons.svc", 5)
        a = answers.pop(0)
        if isinstance(a, OSError):
            raise a
        return a

    nodes_file = tmp_path / "nodes.yaml"
    nodes_file.write_text("- {name: pinned, address: '10.0.0.2:5', labels: {from: file}}\n")
    inv = NodeInventory(nodes_file=nodes_file, dns=[("daemons.svc", 5)], resolver=resolver)
    inv.load()
    assert [(n.name, n.source) for n in inv.nodes()] == [
        ("10.0.0.1:5", "dns"),
        ("pinned", "file"),
    ]  # file wins
    inv.resolve_dns()
    assert [n.address for n in inv.nodes()] == ["10.0.0.3:5", "10.0.0.2:5"]
    inv.resolve_dns()  # resolver failure: keep the previous records
    assert [n.address for n in inv.nodes()] == ["10.0.0.3:5", "10.0.0.2:5"]
    inv.record_contact("10.0.0.3:5", "SERVING", reported_name="gpu-node-7")
    assert [n.name for n in inv.nodes()] == ["gpu-node-7", "pinned"]  # DNS nodes take their reported name


def test_missing_or_bad_nodes_file_fails_startup(tmp_path: Path) -> None:
    with pytest.raises(NodesFileError, match="cannot read"):
        NodeInventory(nodes_file=tmp_path / "absent.yaml").load()
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {address: nope}")
    with pytest.raises(NodesFileError, match="entry 0"):
        NodeInventory(nodes_file=bad).load()


def test_system_resolver_finds_localhost() -> None:
    assert "127.0.0.1:4000" in system_resolver("localhost", 4000)


def _expr(detail: str, matched: bool = False) -> validation_pb2.ExpressionVerdict:
    return validation_pb2.ExpressionVerdict(
        feature="pci.device", element="vendor", op="In", matched=matched, detail=detail
    )


def test_failure_reasons_come_from_the_best_failing_set() -> None:
    near = validation_pb2.SetVerdict(
        index=1,
        description="gpu",
        rules_matched=1,
        rules_total=2,
        rules=[
            validation_pb2.RuleVerdict(name="kernel", matched=True),
            validation_pb2.RuleVerdict(
                name="gpu",
                match_features=[
                    validation_pb2.TermVerdict(
                        feature="pci.device",
                        feature_present=True,
                        expressions=[_expr("wanted In [10de], node has 1af4"), _expr("ok", True)],
                    ),
                ],
            ),
        ],
    )
    far = validation_pb2.SetVerdict(
        index=0,
        weight=50,
        rules_matched=0,
        rules_total=1,
        rules=[
            validation_pb2.RuleVerdict(name="fpga", match_features=[validation_pb2.TermVerdict(feature="fpga.device")]),
        ],
    )
    report = validation_pb2.ValidationReport(sets=[far, near])
    assert failure_reasons(report) == ["SET #2 (gpu), rule gpu: pci.device.vendor: wanted In [10de], node has 1af4"]
    only_far = validation_pb2.ValidationReport(sets=[far])
    assert failure_reasons(only_far) == ["SET #1, rule fpga: fpga.device: feature not present on the node"]
    any_rule = validation_pb2.ValidationReport(
        sets=[
            validation_pb2.SetVerdict(
                rules_total=1,
                rules=[
                    validation_pb2.RuleVerdict(
                        name="nic",
                        match_any=[
                            validation_pb2.MatchAnyVerdict(
                                terms=[
                                    validation_pb2.TermVerdict(
                                        feature="network.device",
                                        feature_present=True,
                                        expressions=[_expr("wanted mlx5_core")],
                                    )
                                ]
                            ),
                            validation_pb2.MatchAnyVerdict(terms=[validation_pb2.TermVerdict(feature="rdma.device")]),
                        ],
                    ),
                ],
            )
        ]
    )
    assert failure_reasons(any_rule) == [
        "SET #1, rule nic, alternative 1: pci.device.vendor: wanted mlx5_core",
        "SET #1, rule nic, alternative 2: rdma.device: feature not present on the node",
    ]
    assert failure_reasons(validation_pb2.ValidationReport()) == [
        "no compatibility set was evaluated (do the --tags select any set?)"
    ]
    passed = validation_pb2.ValidationReport(sets=[far, validation_pb2.SetVerdict(passed=True)])
    assert failure_reasons(passed) == []


def test_summary_counts_and_ranking() -> None:
    results = [
        fleet_pb2.NodeResult(node_name="c", status="OK", compatible=True, score=1),
        fleet_pb2.NodeResult(node_name="b", status="OK", compatible=True, score=9),
        fleet_pb2.NodeResult(node_name="a", status="OK", compatible=True, score=1),
        fleet_pb2.NodeResult(node_name="d", status="OK"),
        fleet_pb2.NodeResult(node_name="0", status="UNAVAILABLE"),
    ]
    s = summarize(results, "sha256:i", "sha256:a", 0.5)
    assert (s.compatible, s.incompatible, s.failed) == (3, 1, 1)
    assert [r.node_name for r in s.ranking] == ["b", "a", "c", "0", "d"]
    assert s.ranking[3].status == "UNAVAILABLE" and s.image_digest == "sha256:i"


def test_deadline_margin_is_small_and_bounded() -> None:
    assert deadline_margin(0.2) == pytest.approx(0.05)
    assert deadline_margin(3.0) == pytest.approx(0.3)
    assert deadline_margin(600) == 1.0


def test_fanout_config_is_checked() -> None:
    with pytest.raises(ValueError):
        FanoutConfig(concurrency=0)
    with pytest.raises(ValueError):
        FanoutConfig(node_timeout=0)


def test_selector_parsing() -> None:
    assert parse_selector(["gpu=nvidia", "zone=a,tier = 2"]) == {"gpu": "nvidia", "zone": "a", "tier": "2"}
    assert parse_selector(["empty="]) == {"empty": ""}
    for bad in (["novalue"], ["=v"]):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_selector(bad)


def test_table_lists_every_reason_and_error_in_rank_order() -> None:
    def node(
        name: str,
        status: str = "OK",
        compatible: bool = False,
        reasons: list[str] | None = None,
        error: str = "",
    ) -> NodeVerdict:
        return NodeVerdict(
            name, f"{name}:1", {}, compatible, 5 if compatible else 0, status, error, 0.01, 1, reasons or []
        )

    answer = FleetAnswer(
        [
            node("vm", reasons=["no GPU", "kernel too old"]),
            node("gone", "UNAVAILABLE", error="refused"),
            node("h100", compatible=True),
        ],
        FleetSummary(1, 1, 1, ["h100", "gone", "vm"], "", "", 0.2),
    )
    lines = render_table(answer).splitlines()
    assert [ln.split()[1] for ln in lines[1:4]] == ["h100", "gone", "vm"]
    assert lines[2].endswith("refused") and "UNAVAILABLE" in lines[2]
    assert lines[3].endswith("no GPU") and lines[4].strip() == "kernel too old"
    assert lines[4].index("kernel") == lines[3].index("no GPU")  # continuation lines stay in the column
    assert lines[-1] == "1 of 3 node(s) fit, 1 do not, 1 failed (0.20s)"


def test_wildcard_hosts() -> None:
    for host in ("0.0.0.0", "::", "[::]", "", "*", "0:0::0", "[::%eth0]"):
        assert is_wildcard_host(host), host
    for host in ("127.0.0.1", "::1", "node-1.example", "10.0.0.0", "0.example"):
        assert not is_wildcard_host(host), host


def test_a_wildcard_address_cannot_register() -> None:
    inv = NodeInventory()
    for address in ("0.0.0.0:50051", "[::]:50051", "[0:0::0]:1"):
        with pytest.raises(ValueError, match=r"wildcard host .*--advertise"):
            inv.register("n", address, {}, 0)
    assert inv.nodes() == []


def test_two_names_cannot_share_an_address_until_the_lease_lapses() -> None:
    clock = Clock()
    inv = NodeInventory(lease_ttl=10.0, clock=clock)
    inv.register("a", "10.0.0.1:1", {}, 0)
    with pytest.raises(AddressInUse, match=r"10.0.0.1:1 is held by registered node 'a'"):
        inv.register("b", "10.0.0.1:1", {}, 0)
    assert [n.name for n in inv.nodes()] == ["a"]
    inv.register("a", "10.0.0.1:1", {"renewed": "yes"}, 0)  # the holder renews
    clock.now += 10.5  # a's lease lapsed: the address is free
    inv.register("b", "10.0.0.1:1", {}, 0)
    assert [(n.name, n.address) for n in inv.nodes()] == [("b", "10.0.0.1:1")]
    inv.register("b", "10.0.0.2:1", {}, 0)  # a node may move; its old address is free at once
    inv.register("c", "10.0.0.1:1", {}, 0)
    assert [(n.name, n.address) for n in inv.nodes()] == [("b", "10.0.0.2:1"), ("c", "10.0.0.1:1")]
    assert inv.deregister("c")
    inv.register("d", "10.0.0.1:1", {}, 0)  # deregistration frees the address too
    assert sorted(n.name for n in inv.nodes()) == ["b", "d"]


def test_a_registration_cannot_take_a_nodes_file_address(tmp_path: Path) -> None:
    path = tmp_path / "nodes.yaml"
    path.write_text("- {name: pinned, address: '10.0.0.1:1', labels: {from: file}}\n")
    inv = NodeInventory(nodes_file=path)
    inv.load()
    with pytest.raises(AddressInUse, match=r"10.0.0.1:1 is node 'pinned' in the nodes file .*nodes.yaml"):
        inv.register("intruder", "10.0.0.1:1", {}, 0)
    inv.register("pinned", "10.0.0.1:1", {"from": "lease"}, 0)  # the same node under its own name: accepted
    assert [(n.name, n.source, dict(n.labels)) for n in inv.nodes()] == [("pinned", "file", {"from": "file"})]
    # The file is edited to claim a registered node's address: the lease is dropped, its renewal refused.
    inv.register("edge", "10.0.0.9:1", {}, 0)
    path.write_text("- {name: pinned, address: '10.0.0.1:1'}\n- {name: edge-in-file, address: '10.0.0.9:1'}\n")
    assert sorted((n.name, n.source) for n in inv.nodes()) == [("edge-in-file", "file"), ("pinned", "file")]
    assert inv.registrations() == 1  # only pinned's own lease is left
    with pytest.raises(AddressInUse, match="'edge-in-file' in the nodes file"):
        inv.register("edge", "10.0.0.9:1", {}, 0)


def test_a_registration_never_shadows_a_dns_node() -> None:
    """Issue 8 item 7: not its address (that would relabel another machine's answers), not its name."""
    inv = NodeInventory(dns=[("daemons.svc", 1)], resolver=lambda h, p: ["10.0.0.1:1", "10.0.0.2:1"])
    inv.load()
    with pytest.raises(NameInUse, match=r"comes from DNS \(daemons.svc:1\)"):
        inv.register("gpu-1", "10.0.0.1:1", {"gpu": "nvidia"}, 0)
    inv.record_contact("10.0.0.2:1", "SERVING", reported_name="cpu-2")  # DNS nodes are named by what they report
    with pytest.raises(NameInUse):
        inv.register("cpu-2", "10.0.0.9:1", {}, 0)
    inv.register("gpu-1", "10.0.0.9:1", {}, 0)
    listed = [(n.name, n.source) for n in inv.nodes()]
    assert listed == [("10.0.0.1:1", "dns"), ("cpu-2", "dns"), ("gpu-1", "registered")]


def test_only_the_registrant_renews_or_deregisters() -> None:
    inv = NodeInventory(nodes_file=None)
    inv.register("edge", "10.0.0.5:1", {}, 0, principal="key:a")
    inv.register("edge", "10.0.0.5:1", {}, 0, principal="key:a")
    with pytest.raises(NotRegistrant):
        inv.register("edge", "10.0.0.6:1", {}, 0, principal="key:b")
    with pytest.raises(NotRegistrant):
        inv.deregister("edge", principal="key:b")
    assert inv.deregister("edge", principal="key:a")


def test_registrations_are_capped_and_checked() -> None:
    clock = Clock()
    inv = NodeInventory(lease_ttl=10.0, clock=clock, max_registrations=3)
    for i in range(3):
        inv.register(f"n{i}", f"10.0.0.{i}:1", {}, 0)
    with pytest.raises(RegistrationsFull, match="holds 3 registrations"):
        inv.register("n3", "10.0.0.3:1", {}, 0)
    inv.register("n0", "10.0.0.0:1", {}, 0)  # a renewal is never refused
    clock.now += 5
    inv.register("n0", "10.0.0.0:1", {}, 0)
    clock.now += 6  # n1 and n2 lapsed: room again
    inv.register("n3", "10.0.0.3:1", {}, 0)
    assert [n.name for n in inv.nodes()] == ["n0", "n3"]
    bad = [
        ("x" * 254, "10.0.0.9:1", {}, "name must be 1-253"),
        ("bad\nname", "10.0.0.9:1", {}, "name must be printable"),
        ("ok", "h" * 300 + ":1", {}, "address must be at most"),
        ("ok", "10.0.0.9:1", {f"k{i}": "v" for i in range(65)}, "at most 64 labels"),
        ("ok", "10.0.0.9:1", {"k" * 318: "v"}, "label key"),
        ("ok", "10.0.0.9:1", {"k": "v" * 254}, "at most 253 printable"),
        ("ok", "10.0.0.9:1", {"k": "a\x1b[2J"}, "printable"),
    ]
    for name, address, labels, message in bad:
        with pytest.raises(ValueError, match=message.replace("[", r"\[")):
            inv.register(name, address, labels, 0)


def test_contacts_of_departed_nodes_are_forgotten() -> None:
    clock = Clock()
    inv = NodeInventory(lease_ttl=10.0, clock=clock)
    for i in range(50):
        inv.register(f"n{i}", f"10.0.0.{i}:1", {}, 0)
        inv.record_contact(f"10.0.0.{i}:1", "SERVING")
    assert inv.contacts() == 50
    inv.register("stays", "10.0.1.1:1", {}, 30)
    clock.now += 11
    assert [n.name for n in inv.nodes()] == ["stays"]
    assert inv.contacts() == 1
    inv.deregister("stays")
    assert inv.nodes() == [] and inv.contacts() == 0


def test_channel_pool_prunes_departed_addresses_but_not_those_in_use() -> None:
    pool = ChannelPool()
    try:
        for a in ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"):
            pool.channel(a)  # channels connect lazily: no server needed
        with pool.in_use(["127.0.0.1:2"]):
            assert pool.prune({"127.0.0.1:1"}) == 1  # :3 closed, :2 kept while a call uses it
            assert pool.addresses() == {"127.0.0.1:1", "127.0.0.1:2"}
        assert pool.prune({"127.0.0.1:1"}) == 1
        assert pool.addresses() == {"127.0.0.1:1"}
    finally:
        pool.close()
    assert len(pool) == 0


def test_aggregator_flags_set_the_registration_cap() -> None:
    from nodecompat.clients.cli import build_parser
    from nodecompat.clients.cmd_aggregator import build_config

    parser = build_parser()
    assert build_config(parser.parse_args(["aggregator", "--max-registrations", "5"])).max_registrations == 5
    assert build_config(parser.parse_args(["aggregator"])).max_registrations == 10_000
    with pytest.raises(ValueError, match="--max-registrations"):
        build_config(parser.parse_args(["aggregator", "--max-registrations", "-1"]))


def test_fanout_transport_follows_the_watch_transport_unless_given(caplog: pytest.LogCaptureFixture) -> None:
    """--fanout-transport defaults to --watch-transport's choice (h2 when neither is given); h2 keeps the same byte
    budget in ~4 KiB units; TLS credentials without their PEM files fall back to grpc with a WARNING."""
    import ssl

    import grpc

    from nodecompat.clients.cli import build_parser
    from nodecompat.clients.cmd_aggregator import build_config
    from nodecompat.server.fleet.aggregator import AggregatorConfig, fanout_h2_options
    from nodecompat.server.fleet.channel_pool import ChannelPool
    from nodecompat.server.h2.call import H2Options
    from nodecompat.server.limits import H2_CONNECTION_BYTES, H2_TLS_CONNECTION_BYTES

    parser = build_parser()

    def transport(*flags: str) -> str:
        return build_config(parser.parse_args(["aggregator", *flags])).fanout_transport

    assert transport() == "h2" and AggregatorConfig().fanout_transport == "h2"
    assert transport("--watch-transport", "h2") == "h2" and transport("--watch-transport", "grpc") == "grpc"
    assert transport("--watch-transport", "h2", "--fanout-transport", "grpc") == "grpc"
    assert transport("--watch-transport", "grpc", "--fanout-transport", "h2") == "h2"
    assert fanout_h2_options(AggregatorConfig(fanout_transport="grpc")) is None
    opts = fanout_h2_options(AggregatorConfig(fanout_transport="h2"))
    assert opts is not None and opts.ssl is None
    assert ChannelPool(max_bytes=10 * H2_CONNECTION_BYTES, h2=opts).max_channels == 10
    tls_opts = H2Options(ssl=ssl.create_default_context())  # OpenSSL's state: a TLS connection's own unit
    assert ChannelPool(max_bytes=10 * H2_TLS_CONNECTION_BYTES, h2=tls_opts).max_channels == 10
    # TLS to the nodes, but no files to make the h2 context: the grpc client, said once at WARNING
    with caplog.at_level("WARNING", logger="nodecompat.server.fleet.aggregator"):
        assert fanout_h2_options(AggregatorConfig(node_credentials=grpc.ssl_channel_credentials())) is None
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "node_tls=ClientTls" in caplog.text
    with pytest.raises(ValueError, match="grpc or h2"):
        fanout_h2_options(AggregatorConfig(fanout_transport="quic"))


def test_channel_pool_budget_is_in_bytes_and_a_repeated_scan_finds_the_pooled_channels() -> None:
    """The default cap comes from the byte budget. Past the cap a caller gets a channel of its own (not
    pooled) and the pooled ones stay: a scan larger than the pool, repeated in the same order (what a
    fan-out does), finds the first max_channels addresses' channels every time (least-recently-used
    eviction would have closed each of them before its turn came again: no warm channel at all)."""
    from nodecompat.server.fleet.channel_pool import CONNECTION_BYTES, MAX_POOL_BYTES

    assert ChannelPool().max_channels == MAX_POOL_BYTES // CONNECTION_BYTES
    assert ChannelPool(max_bytes=3 * CONNECTION_BYTES).max_channels == 3
    pool = ChannelPool(max_bytes=4 * CONNECTION_BYTES)
    own = []
    try:
        scan = [f"127.0.0.1:{p}" for p in range(1, 11)]
        before = {a: pool.channel(a) for a in scan}
        own += [before[a] for a in scan[4:]]
        for _ in range(3):
            now = {a: pool.channel(a) for a in scan}
            own += [now[a] for a in scan[4:]]
            assert [a for a in scan if now[a] is before[a]] == scan[:4]
            assert pool.addresses() == set(scan[:4])
    finally:
        for ch in own:
            pool.call(ch.close())
        pool.close()
