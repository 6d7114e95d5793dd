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


@pytest.mark.registry
@pytest.mark.skipif(not (shutil.which("docker-registry") and shutil.which("skopeo")), reason="make test-deps")
def test_demo_registry_refuses_a_busy_port_and_cleans_up_on_sigterm(tmp_path: Path) -> None:
    import os
    import signal
    import socket
    import time

    tool = [sys.executable, str(ROOT / "tools/demo_registry.py")]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([*tool, "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (
        f"demo-registry: port {port} on 127.0.0.1 is already in use (another registry, or an earlier "
        f"`make demo-registry`?): stop it, or run `make demo-registry PORT=N` with a free port N (PORT=0 picks "
        "one) and use 127.0.0.1:N in the recipes\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        proc = subprocess.Popen([*tool, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # printed once the image is pushed
            assert first.startswith("registry at 127.0.0.1:") and "/app:v1 (sha256:" in first, first
            work = [p for p in tmp_path.iterdir() if p.name.startswith("nodecompat-demo-")]
            assert len(work) == 1
            registry_pids = subprocess.run(["pgrep", "-f", f"docker-registry serve {work[0]}"],
                                           capture_output=True, text=True).stdout.split()
            assert len(registry_pids) == 1
            proc.send_signal(sig)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert not work[0].exists(), f"{sig.name} left {work[0]}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.path.exists(f"/proc/{registry_pids[0]}"):
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{registry_pids[0]}"), f"{sig.name} left docker-registry running"


@pytest.mark.registry
@pytest.mark.skipif(not (shutil.which("docker-registry") and shutil.which("skopeo") and shutil.which("make")),
                    reason="make test-deps")
def test_demo_registry_under_make_cleans_up_when_its_group_gets_sigterm(tmp_path: Path) -> None:
    """`make demo-registry` stopped as tools/readme_check.py stops a recipe (SIGTERM to the process group): GNU
    make forwards its SIGTERM to the tool, so the tool gets two at once; the second must not escape the clean-up
    as a traceback (it did, in ~1 full suite of 3 under load: the README check then failed). Racy by nature, so
    a few rounds; each asserts no traceback, the registry gone and the temporary directory removed."""
    import os
    import signal
    import time

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    for _ in range(3):
        proc = subprocess.Popen(["make", "-s", "demo-registry", "PORT=0"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.startswith("registry at 127.0.0.1:"), first
            work = [p for p in tmp_path.iterdir() if p.name.startswith("nodecompat-demo-")]
            assert len(work) == 1
            registry_pids = subprocess.run(["pgrep", "-f", f"docker-registry serve {work[0]}"],
                                           capture_output=True, text=True).stdout.split()
            assert len(registry_pids) == 1
            os.killpg(proc.pid, signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert "Traceback" not in err, err
        assert not work[0].exists(), f"left {work[0]}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.path.exists(f"/proc/{registry_pids[0]}"):
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{registry_pids[0]}"), "left docker-registry running"
