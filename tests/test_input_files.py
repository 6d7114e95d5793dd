"""Files named on the command line: bounded reads, and errors that name the file (exit 2, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = str(REPO / "examples" / "gpu-node.yaml")


def nodecompat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodecompat.clients.cli", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["lint", "/dev/zero"], "spec /dev/zero is larger than 1048576 bytes"),
        (["validate", "--spec", "/dev/zero", "--features", SPEC], "spec /dev/zero is larger than"),
        (["validate", "--spec", "/etc"], "cannot read spec /etc: Is a directory"),
        (["validate", "--spec", "/bin/sh"], "spec /bin/sh is not UTF-8 text"),
        (["fleet", "validate", "--aggregator", "127.0.0.1:1", "--spec", "/dev/zero"], "--spec /dev/zero is larger"),
    ],
)
def test_unusable_input_files_are_exit_2_with_the_file_named(argv: list[str], words: str) -> None:
    done = nodecompat(*argv)
    assert done.returncode == 2, done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr


def test_deeply_nested_snapshot_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    snap = tmp_path / "deep.json"
    snap.write_text("[" * 200_000 + "]" * 200_000)
    done = nodecompat("validate", "--spec", SPEC, "--features", str(snap))
    assert done.returncode == 2 and "nested too deeply" in done.stderr and "Traceback" not in done.stderr


def test_an_unexpected_exception_is_exit_2_not_no(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    """Exit 1 means "not compatible / problems found": a crash must never read as that."""
    import nodecompat.clients.cmd_lint as cmd_lint
    from nodecompat.clients import cli

    def boom(_data: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(cmd_lint, "lint_spec", boom)
    assert cli.main(["lint", SPEC]) == 2
    err = capsys.readouterr().err
    assert "unexpected error: RuntimeError: simulated bug" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["features", "--node", "127.0.0.1:99999"], "port must be 1-65535"),
        (["validate", "--spec", SPEC, "--node", "127.0.0.1:99999"], "--node '127.0.0.1:99999': port must be"),
        (["validate", "--spec", SPEC, "--node", "nocolon"], "expected HOST:PORT"),
        (["serve", "--register", "127.0.0.1:99999"], "--register '127.0.0.1:99999': port must be"),
    ],
)
def test_addresses_are_checked_before_dialling(argv: list[str], words: str) -> None:
    """gRPC would dial 127.0.0.1:99999 as port 34463 without a word."""
    done = nodecompat(*argv)
    assert done.returncode == 2 and words in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        # --listen 127.0.0.1:0: the default port may be taken by another process on the machine, and the listen
        # address is checked first
        (["serve", "--listen", "127.0.0.1:0", "--ca-file", "/nonexistent/ca.pem"],
         "--ca-file /nonexistent/ca.pem is not a readable file"),
        (["serve", "--listen", "127.0.0.1:0", "--node-name", "a\nb"], "--node-name: must be printable"),
        (["aggregator", "--listen", "127.0.0.1:0", "--ca-file", "/nonexistent/ca.pem"],
         "--ca-file /nonexistent/ca.pem is not a readable file"),
    ],
)
def test_servers_check_files_and_names_at_start(argv: list[str], words: str) -> None:
    done = nodecompat(*argv)
    assert done.returncode == 2 and words in done.stderr, done.stderr
