"""A local OCI registry with one image in it, for trying the README's --image recipes by hand.

Starts Debian's docker-registry on 127.0.0.1:5000 (or --port; 0 picks a free port), data in a temporary
directory, pushes a small single-platform image as app:v1 with skopeo (the same helpers the tests use,
tests/support_registry.py), prints the reference, and serves until Ctrl-C or any termination signal
(SIGTERM, SIGHUP, SIGQUIT), after which the registry process and the temporary directory are gone.
A port something else already listens on is refused with a message instead of pushing into whatever
answers there. Needs `docker-registry` and `skopeo` (`make test-deps`).

Usage: python tools/demo_registry.py [--port PORT]     (make demo-registry [PORT=5001])
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

DEFAULT_PORT = 5000


class Stop(Exception):
    """A termination signal arrived."""


_stopping = False  # a termination signal has been turned into Stop: later ones are ignored


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    """Raise Stop on the first termination signal, ignore every later one. Two arrive together when the
    tool runs under make and its process group is signalled (README recipes: `make demo-registry`, stopped by
    tools/readme_check.py's `kill -TERM -- -PGID`): GNU make forwards the SIGTERM it got to its child, which
    the group's SIGTERM has reached too, so the second one landed while the clean-up was still re-arming the
    handlers and escaped as a traceback (registry and temporary directory left behind)."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    raise Stop(signal.Signals(signum).name)


def port_problem(port: int) -> str:
    """Why 127.0.0.1:port cannot be ours, or ""."""
    from nodecompat.clients.listen_check import listen_problem

    problem = listen_problem(f"127.0.0.1:{port}", "--port")
    if "already in use" in problem:
        return (f"port {port} on 127.0.0.1 is already in use (another registry, or an earlier "
                f"`make demo-registry`?): stop it, or run `make demo-registry PORT=N` with a free port N "
                f"(PORT=0 picks one) and use 127.0.0.1:N in the recipes")
    return problem


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; "
                    "0: any free port, printed)")
    args = ap.parse_args(argv)
    if not (shutil.which("docker-registry") and shutil.which("skopeo")):
        print("demo-registry: needs docker-registry and skopeo: run `make test-deps`", file=sys.stderr)
        return 2
    import support_registry as sr

    port = args.port or sr.free_port()
    if not 0 < port < 65536:
        print(f"demo-registry: --port {args.port}: must be 1-65535 (or 0 for any free port)", file=sys.stderr)
        return 2
    problem = port_problem(port)
    if problem:
        print(f"demo-registry: {problem}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, _on_signal)
    tmp = tempfile.mkdtemp(prefix="nodecompat-demo-")
    reg = sr.RegistryProcess(Path(tmp) / "registry")
    try:
        sr.free_port = lambda: port  # type: ignore[assignment]  # the port checked above
        reg.start()
        img = sr.push_image(reg.host, "app", Path(tmp), tag="v1")
        print(f"registry at {reg.host} (plain HTTP); image {img.reference} ({img.digest})", flush=True)
        print("Ctrl-C (or SIGTERM) stops it and removes its data", flush=True)
        while True:
            signal.pause()
    except (Stop, KeyboardInterrupt):
        return 0
    except Exception as exc:
        print(f"demo-registry: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not interrupt the clean-up
        reg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
