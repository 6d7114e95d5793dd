"""Issue 10, what must hold: the README's recipes run top to bottom in one fresh shell against the real
daemon, aggregator and demo registry (tools/readme_check.py, `make readme-check`), and the checker itself
fails on what it must fail on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import readme_check as rc  # noqa: E402


def test_markers_and_announcements_are_parsed() -> None:
    text = """
```sh
a --x   # exit 0|1: depends
b 'it''s' # prints an error: announced
c &
# a comment line
d \\
  --more
```
<!-- readme-check: skip (needs a cluster) -->
```sh
kubectl apply -k deploy
```
<!-- readme-check: background ready=grpc://127.0.0.1:1 log="serving on" -->
```sh
server --port 1   # keep it running
```
```text
not run
```
"""
    blocks = rc.parse(text)
    assert len(blocks) == 3
    a, b, c, d = blocks[0].commands
    assert (a.allowed, a.error_announced, a.background) == ((0, 1), False, False)
    assert b.error_announced and b.allowed == (0,)
    assert c.background and not d.background and d.text == "d    --more"
    assert blocks[1].skip == "(needs a cluster)"
    server = blocks[2]
    assert server.server and server.ready == "grpc://127.0.0.1:1" and server.log_text == "serving on"
    assert server.commands[0].background
    assert rc._comment("x '#not' \"# nor\" # yes it's one") == "# yes it's one"


@pytest.mark.parametrize(
    ("recipe", "why"),
    [
        ("false", "exit 1 (the README announces 0)"),
        ("echo 'something error-ish' >&2", "unannounced error on stderr"),
        ("touch left-behind.readme-check-test", "left files in the repository"),
        ("python3 -c 'raise SystemExit(3)'   # exit 0|1: not 3", "exit 3 (the README announces 0|1)"),
    ],
)
def test_the_check_fails_on_what_it_must(tmp_path: Path, recipe: str, why: str) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"```sh\ntrue\n{recipe}\n```\n")
    try:
        r = subprocess.run([sys.executable, str(ROOT / "tools/readme_check.py"), "--readme", str(readme)],
                           capture_output=True, text=True, timeout=120)
    finally:
        (ROOT / "left-behind.readme-check-test").unlink(missing_ok=True)
    assert r.returncode == 1 and why in r.stderr, r.stdout + r.stderr


@pytest.mark.registry
@pytest.mark.skipif(not (shutil.which("docker-registry") and shutil.which("skopeo")), reason="make test-deps")
def test_readme_recipes_run_top_to_bottom() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "tools/readme_check.py")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-4000:]
    assert "### every recipe ran" in r.stdout
    for ran in ("$ make run", "$ make demo-registry", "$ nodecompat fleet nodes --aggregator 127.0.0.1:50050 --wait 30",
                "$ OTEL_TRACES_EXPORTER=console make run LISTEN=127.0.0.1:50052"):
        assert ran in r.stdout, ran
