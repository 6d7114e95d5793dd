"""Issue 10: the conventions a newcomer expects and the errors that say what to do (each message verbatim
enough that a regression shows), and issue 11 item 4: each sub-command imports only what it uses."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support_daemon import free_port, health_status, start_daemon

from nodecompat.clients import cli

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "nodecompat.clients.cli"]
H100 = ROOT / "tests/fixtures/hosts/h100-server"
SPEC = ROOT / "examples/gpu-node.yaml"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _parsers(parser: argparse.ArgumentParser, path: str = "nodecompat") -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.extend(_parsers(sub, f"{path} {name}"))
    return out


def test_version() -> None:
    r = run("--version")
    assert (r.returncode, r.stdout) == (0, "nodecompat 0.1.0\n")


def test_every_command_has_a_description_and_every_option_help_with_its_default() -> None:
    parsers = _parsers(cli.build_parser())
    names = {p for p, _ in parsers}
    assert {"nodecompat fleet validate", "nodecompat fleet nodes", "nodecompat completion"} <= names
    for path, parser in parsers[1:]:
        assert parser.description, f"{path} has no description"
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or "-h" in action.option_strings:
                continue
            assert action.help, f"{path} {action.option_strings[0]} has no help"
            default = action.default
            if default not in (None, False, [], "", argparse.SUPPRESS):
                flat = " ".join(text.split())
                assert f"(default: {default})" in flat or "(default" in " ".join(action.help.split()), (
                    f"{path} {action.option_strings[0]}: default {default!r} not shown"
                )
    help_of = {p: parser for p, parser in parsers}
    assert "(default: 60.0)" in " ".join(help_of["nodecompat serve"].format_help().split())  # --refresh-interval
    agg = " ".join(help_of["nodecompat aggregator"].format_help().split())
    for shown in ("--lease-ttl LEASE_TTL lease (s) granted to a registered node that asks for none (default: 30.0)",
                  "--concurrency CONCURRENCY node calls in flight at once (default: 64)",
                  "(default: 10.0)", "{DEBUG,INFO,WARNING,ERROR}"):
        assert shown in agg


def test_top_level_help_lines_match_the_modules() -> None:
    """cli.COMMANDS lists every sub-command without importing it; its help line is the module's own."""
    full = cli.build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert helps == {name: help_text for name, (_m, help_text) in cli.COMMANDS.items()}


def test_platform_is_spelled_the_same_in_validate_and_fleet_validate() -> None:
    help_of = dict(_parsers(cli.build_parser()))
    def platform(path: str) -> tuple[object, object]:
        action = next(a for a in help_of[path]._actions if "--platform" in a.option_strings)
        return action.metavar, action.help
    assert platform("nodecompat validate") == platform("nodecompat fleet validate") == platform("nodecompat attach")
    assert platform("nodecompat validate")[0] == "OS[/ARCH[/VARIANT]][:OS_VERSION]"


def test_fleet_validate_help_gives_its_exit_codes() -> None:
    r = run("fleet", "validate", "--help")
    assert "exit status: 0 some node fits, 1 no node fits (or none is selected), 2 error" in r.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    r = run("completion", shell)
    assert r.returncode == 0 and "nodecompat" in r.stdout
    if shell == "fish":
        assert "complete --command nodecompat" in r.stdout


def test_completion_completes_sub_commands_and_options() -> None:
    """What the scripts do: call nodecompat with argcomplete's variables and read candidates from fd 8."""
    import shlex

    for line, want in (("nodecompat fl", {"fleet"}),
                       ("nodecompat fleet validate --pla", {"--platform", "--plain-http"})):
        r = subprocess.run(
            ["bash", "-c", f"{shlex.join(CLI)} 8>&1 9>&2 1>/dev/null 2>&1"],
            env={**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
                 "_ARGCOMPLETE_IFS": "\n"},
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert want <= {c.strip() for c in r.stdout.split("\n")}, (line, r.stdout)


def test_probes_flag_lists_valid_names() -> None:
    r = run("serve", "--probes", "pci,nosuch")
    assert r.returncode == 2
    from nodecompat.clients.cmd_serve import probe_names

    names = probe_names()
    assert {"cpu", "gpu", "pci", "system"} <= set(names)
    assert r.stderr == f"nodecompat serve: --probes: no probe named 'nosuch'; valid names: {', '.join(names)}\n"


def test_aggregator_refuses_a_busy_port_in_one_readable_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        r = run("aggregator", "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 2
    assert r.stderr == (
        f"nodecompat aggregator: --listen 127.0.0.1:{port}: port {port} is already in use (another "
        "`nodecompat serve`, `make run` or aggregator?): stop it, or choose a free port with --listen HOST:PORT "
        "(`make run LISTEN=HOST:PORT`)\n"
    )


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: v1alpha1\ncompatibilities: [\n  - {a: 1\n")
    r = run("validate", "--spec", str(bad), "--host-root", str(H100))
    assert r.returncode == 2 and "<unicode string>" not in r.stderr
    assert f"  {bad}:3:3: not valid YAML or JSON: while parsing a flow node" in r.stderr
    r = run("lint", str(bad))
    assert r.returncode == 1 and r.stdout.startswith(f"{bad}:3:3: error: not valid YAML or JSON")
    r = run("attach", "--image", f"127.0.0.1:{free_port()}/app:v1", "--spec", str(bad), "--plain-http")
    assert r.returncode == 2 and r.stderr.startswith(f"{bad}:3:3: not valid YAML or JSON")
    snapshot = tmp_path / "node.json"
    snapshot.write_text(run("features", "--host-root", str(H100), "-o", "json").stdout)
    r = run("what-if", "--spec", str(bad), "--features", str(snapshot))
    assert r.returncode == 2 and f"\n  {bad}:3:3: not valid YAML or JSON" in r.stderr
    assert "<unicode string>" not in r.stderr


def test_registry_unreachable_without_the_urllib3_tail() -> None:
    port = free_port()
    r = run("validate", "--image", f"127.0.0.1:{port}/app:v1", "--plain-http", "--host-root", str(H100))
    assert r.returncode == 2
    assert r.stderr == (f"nodecompat validate: UNAVAILABLE: registry 127.0.0.1:{port} is unreachable "
                        f"(resolving 127.0.0.1:{port}/app:v1): Connection refused\n")


def test_features_table_summarises_large_features() -> None:
    from datetime import UTC, datetime

    from nodecompat.clients.cmd_features import TABLE_GROUP_OVER, render_table
    from nodecompat.features import AttributeFeature, Features, FlagFeature
    from nodecompat.probes.runner import ProbeRound

    config = {f"CONFIG_OPT_{i}": ("y" if i % 3 else "m") for i in range(1, 1746)}
    config["CONFIG_HZ"] = "250"
    feats = Features(
        flags={"cpu.cpuid": FlagFeature({"AVX2", "FMA3"})},
        attributes={"kernel.config": AttributeFeature(config), "kernel.version": AttributeFeature({"major": "6"})},
    )
    rnd = ProbeRound(feats, [], datetime.now(UTC))
    lines = render_table(rnd).splitlines()
    assert "kernel.config  (attributes, 1746: 1164 = y, 581 = m, 1 other)" in lines
    assert not any(line.startswith("    CONFIG_") for line in lines)
    assert "    major = 6" in lines  # small features are listed as before
    assert "summarised: kernel.config (list one with --prefix kernel.config, or everything with --all)" in lines
    expanded = render_table(rnd, expand=True).splitlines()
    assert sum(1 for line in expanded if line.startswith("    CONFIG_")) == 1746 > TABLE_GROUP_OVER
    assert not any(line.startswith("summarised") for line in expanded)
    r = run("features", "--host-root", str(H100), "--all")  # the flag exists and the table still renders
    assert r.returncode == 0 and "probes:" in r.stdout


def test_errors_say_which_server_was_reached(tmp_path: Path) -> None:
    """--node given an aggregator, --aggregator given a daemon, and nothing listening (no TLS hint)."""
    node = start_daemon(tmp_path, "--host-root", str(H100))
    agg_port = free_port()
    agg = subprocess.Popen([*CLI, "aggregator", "--listen", f"127.0.0.1:{agg_port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = run("fleet", "nodes", "--aggregator", node.address)
        assert r.returncode == 2
        assert r.stderr == (
            f"nodecompat fleet: {node.address}: UNIMPLEMENTED: Method not found! ({node.address} is a nodecompat "
            f"node daemon (NodeService), not a fleet aggregator: ask it with `nodecompat features|validate --node "
            f"{node.address}`, or give --aggregator an aggregator's address)\n"
        )
        agg_addr = f"127.0.0.1:{agg_port}"
        deadline = time.monotonic() + 60
        while health_status(agg_addr) != "SERVING" and time.monotonic() < deadline:
            time.sleep(0.1)
        r = run("fleet", "nodes", "--aggregator", agg_addr, "--wait", "1")
        assert r.returncode == 1  # it serves, but knows no node: not every node is SERVING after --wait
        assert "the aggregator knows no node: give it --nodes-file or --dns" in r.stderr
        r = run("validate", "--spec", str(SPEC), "--node", agg_addr)
        assert r.returncode == 2
        assert r.stderr == (
            f"nodecompat validate: node {agg_addr}: UNIMPLEMENTED: Method not found! ({agg_addr} is a nodecompat "
            f"fleet aggregator (FleetService), not a node daemon: ask it with `nodecompat fleet nodes|validate "
            f"--aggregator {agg_addr}`, or give --node a node daemon's address)\n"
        )
        nobody = f"127.0.0.1:{free_port()}"
        r = run("features", "--node", nobody)
        assert r.returncode == 2 and "--tls" not in r.stderr
        assert r.stderr.endswith(f"Connection refused (nothing listens on {nobody}: start one with `nodecompat serve` "
                                 "or `make run`, or give --node the address it serves on)\n")
    finally:
        node.terminate()
        agg.terminate()
        agg.wait(10)


def _modules_after(argv: list[str], env: dict[str, str] | None = None) -> set[str]:
    code = ("import sys\nfrom nodecompat.clients.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
            "    print('MODULES', ' '.join(sorted(sys.modules)), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in {**os.environ, **(env or {})}.items() if not k.startswith("OTEL_")})
    line = next(li for li in r.stderr.splitlines() if li.startswith("MODULES "))
    return set(line.split()[1:])


def test_validate_imports_only_what_it_uses(tmp_path: Path) -> None:
    snapshot = tmp_path / "node.json"
    snapshot.write_text(run("features", "--host-root", str(H100), "-o", "json").stdout)
    mods = _modules_after(["validate", "--spec", str(SPEC), "--features", str(snapshot)])
    assert "nodecompat.engine.evaluate" in mods
    for heavy in ("grpc", "requests", "nodecompat.oci.discovery", "opentelemetry.sdk.trace",
                  "nodecompat.clients.cmd_serve", "nodecompat.clients.cmd_fleet", "nodecompat.probes.runner",
                  "nodecompat.probes.registry",  # the probes' catalog is loaded only when a name is missing
                  "nodecompat.probes.catalog", "nodecompat.hostroot",  # ... its module too (engine/evaluate.py)
                  "re2", "nodecompat.engine.goregexp"):  # Go's dialect and RE2: by the first regex only
        assert heavy not in mods, heavy
    assert "grpc" not in _modules_after(["lint", str(SPEC)])
    assert "grpc" not in _modules_after(["--help"]) | _modules_after(["features", "--host-root", str(H100)])


def test_daemon_without_otel_imports_no_tracing_sdk_nor_registry_client() -> None:
    code = """
import sys
from nodecompat.server import telemetry
from nodecompat.server.node.daemon import DaemonConfig, NodeDaemon
d = NodeDaemon(DaemonConfig(listen="127.0.0.1:0", host_root=sys.argv[1], hotplug=False))
d.start()
d.cache.current(timeout=30)
print(telemetry.server_interceptors(), sorted(m for m in sys.modules
      if m.startswith(("opentelemetry.sdk", "opentelemetry.instrumentation", "requests", "nodecompat.oci.cache"))))
d.stop(grace=0)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    r = subprocess.run([sys.executable, "-c", code, str(H100)], capture_output=True, text=True, timeout=60, env=env)
    assert r.stdout.strip() == "[] []", r.stderr


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"OTEL_TRACES_EXPORTER": "console"},
         "tracing on: service nodecompat-node, exporting spans with console (stdout)"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_SERVICE_NAME": "svc"},
         "tracing on: service svc, exporting spans with otlp (grpc) to http://127.0.0.1:4317"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
         "exporting spans with otlp (http/protobuf) to http://127.0.0.1:4318/v1/traces"),
    ],
)
def test_tracing_says_at_start_where_spans_go(env: dict[str, str], line: str) -> None:
    code = ("import logging, sys; logging.basicConfig(level='INFO', stream=sys.stdout); "
            "from nodecompat.server import telemetry; p = telemetry.init_tracing('nodecompat-node'); "
            "print(bool(telemetry.server_interceptors())); p.shutdown()")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**clean, **env})
    assert line in r.stdout and r.stdout.rstrip().endswith("True"), r.stdout + r.stderr


def test_make_targets(tmp_path: Path) -> None:
    help_text = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    for target in ("install", "run", "test", "lint", "typecheck", "demo-registry", "readme-check", "bench"):
        assert f"make {target} " in help_text, target
    dry = subprocess.run(["make", "-n", "typecheck"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    assert "tools/typecheck.sh" in dry and "mypy" in dry
    r = subprocess.run(["make", "run", f"VENV={tmp_path / 'no-venv'}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    missing = f"{tmp_path / 'no-venv'}/bin/nodecompat is missing: run `make install` first"
    assert r.returncode != 0 and missing in r.stderr
    assert "No such file or directory" not in r.stderr
