"""A local OCI registry with one image in it, for trying the README's --image recipes by hand.

Starts Debian's docker-registry on 127.0.0.1:5000 (data in a temporary directory), pushes a small
single-platform image as app:v1 with skopeo (the same helpers the tests use, tests/support_registry.py),
prints the reference, and serves until Ctrl-C. Needs `docker-registry` and `skopeo` (`make test-deps`).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import support_registry as sr


def main() -> int:
    if not (shutil.which("docker-registry") and shutil.which("skopeo")):
        print("needs docker-registry and skopeo: run `make test-deps`", file=sys.stderr)
        return 2
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    with tempfile.TemporaryDirectory(prefix="nodecompat-demo-") as tmp:
        reg = sr.RegistryProcess(Path(tmp) / "registry")
        sr.free_port = lambda: port  # type: ignore[assignment]  # a fixed, well-known port for the recipes
        reg.start()
        try:
            img = sr.push_image(reg.host, "app", Path(tmp), tag="v1")
            print(f"registry at {reg.host} (plain HTTP); image {img.reference} ({img.digest})", flush=True)
            print("Ctrl-C to stop", flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
        finally:
            reg.stop()


if __name__ == "__main__":
    sys.exit(main())
