"""Running the `nodecompat` CLI as a user would (a subprocess of this interpreter) for the fleet tests:
a feature snapshot of a fixture host, and `fleet validate`'s why-not block."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FIXTURE_HOSTS = Path(__file__).resolve().parent / "fixtures" / "hosts"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`nodecompat ARGS...` run to its end (text output captured; the exit code is the caller's to check)."""
    return subprocess.run([sys.executable, "-m", "nodecompat.clients.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def features_snapshot(tmp: Path, host: str, name: str, strip_nvidia: bool = False) -> Path:
    """tmp/NAME.json: `nodecompat features -o json` of fixture host `host` (a planned host for what-if),
    optionally without the nvidia kernel module."""
    done = cli("features", "--host-root", str(FIXTURE_HOSTS / host), "-o", "json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    if strip_nvidia:
        del doc["flags"]["kernel.loadedmodule"]["elements"]["nvidia"]
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def fleet_validate_why_not(aggregator: str, spec_text: str, spec_file: Path) -> tuple[list[str], str]:
    """`nodecompat fleet validate --aggregator A --spec F` (F written with spec_text), which must exit 0:
    (the lines after its "why not:" line, its whole output)."""
    spec_file.write_text(spec_text)
    done = cli("fleet", "validate", "--aggregator", aggregator, "--spec", str(spec_file))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    return lines[lines.index("why not:") + 1:], done.stdout
