"""RPC figures for the node daemon: GetFeatures and ValidateImage against an empty RPC on the same server.

The "empty RPC" is grpc.health.v1.Health/Check on the same daemon: same server, same channel, same
interceptors, almost no work, so the difference is what our handlers cost. Each figure is measured
serially (one call in flight) and with 16 calls in flight on one channel. Prints figures; asserts nothing.

ValidateImage by reference: unless --image is given, the bench starts Debian's docker-registry on a
loopback port (as the tests do), pushes an image with skopeo and attaches a spec, then prints the first
(cold: registry round trips) call and the warm (daemon-cached) ones against inline-spec calls.

Usage: .venv/bin/python bench/bench_rpc.py [--seconds S] [--image REF --plain-http]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support_daemon import start_daemon

from nodecompat.v1 import features_pb2, node_pb2, node_pb2_grpc

SPEC = """
version: v1alpha1
compatibilities:
- description: realistic
  weight: 10
  rules:
  - name: kernel
    matchFeatures:
    - feature: kernel.version
      matchExpressions:
        major: {op: Ge, value: ["5"]}
  - name: cpu
    matchFeatures:
    - feature: cpu.cpuid
      matchName: {op: InRegexp, value: ["^AVX"]}
    - feature: cpu.model
      matchExpressions:
        vendor_id: {op: In, value: [Intel, AMD]}
  - name: virtio net or mellanox
    matchAny:
    - matchFeatures:
      - feature: pci.device
        matchExpressions:
          vendor: {op: In, value: ["1af4"]}
          class: {op: InRegexp, value: ["^02"]}
    - matchFeatures:
      - feature: pci.device
        matchExpressions:
          vendor: {op: In, value: ["15b3"]}
"""


def measure(call, seconds: float, inflight: int) -> tuple[float, float, float]:
    """(calls/s, p50 ms, p99 ms) of `call()` for `seconds`, with `inflight` concurrent callers."""
    lat: list[float] = []
    stop = time.monotonic() + seconds

    def worker() -> list[float]:
        mine = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            call()
            mine.append(time.perf_counter() - t0)
        return mine

    t0 = time.monotonic()
    with ThreadPoolExecutor(inflight) as ex:
        for part in ex.map(lambda _: worker(), range(inflight)):
            lat.extend(part)
    wall = time.monotonic() - t0
    lat.sort()
    return len(lat) / wall, statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99) - 1] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--image", default=None, help="also measure ValidateImage by reference (cold and warm)")
    ap.add_argument("--plain-http", action="store_true")
    args = ap.parse_args()
    tmp = Path("/tmp/nodecompat-bench")
    tmp.mkdir(exist_ok=True)
    # The bench is the operator's: the daemon may fetch from any registry it is pointed at (docs/security.md).
    d = start_daemon(tmp, "--allowed-registries", "http://*:*", name="bench")
    try:
        ch = grpc.insecure_channel(d.address)
        health = health_pb2_grpc.HealthStub(ch)
        node = node_pb2_grpc.NodeServiceStub(ch)
        calls = {
            "empty RPC (Health/Check)": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10),
            "GetFeatures (cached)": lambda: node.GetFeatures(features_pb2.GetFeaturesRequest(), timeout=10),
            "ValidateImage (inline spec)": lambda: node.ValidateImage(
                node_pb2.ValidateImageRequest(spec=SPEC), timeout=10
            ),
        }
        size = node.GetFeatures(features_pb2.GetFeaturesRequest(), timeout=10).ByteSize()
        print(f"daemon on this machine; GetFeatures response {size} bytes; {args.seconds:g}s per figure")
        print(f"{'call':<32} {'in flight':>9} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for name, call in calls.items():
            call()  # warm
            for inflight in (1, 16):
                rate, p50, p99 = measure(call, args.seconds, inflight)
                print(f"{name:<32} {inflight:>9} {rate:>9.0f} {p50:>8.2f} {p99:>8.2f}")
        image, plain_http, reg = args.image, args.plain_http, None
        if not image:
            image, reg = _local_image(tmp)
            plain_http = True
        if image:
            req = node_pb2.ValidateImageRequest(image=image, plain_http=plain_http)
            t0 = time.perf_counter()
            node.ValidateImage(req, timeout=30)
            cold = (time.perf_counter() - t0) * 1e3
            warm = [0.0] * 50
            for i in range(50):
                t0 = time.perf_counter()
                node.ValidateImage(req, timeout=30)
                warm[i] = (time.perf_counter() - t0) * 1e3
            inline = []
            for _ in range(50):
                t0 = time.perf_counter()
                node.ValidateImage(node_pb2.ValidateImageRequest(spec=SPEC), timeout=30)
                inline.append((time.perf_counter() - t0) * 1e3)
            print(f"ValidateImage by reference: cold {cold:.2f} ms, warm (cached) median "
                  f"{statistics.median(warm):.2f} ms; inline spec median {statistics.median(inline):.2f} ms")
        ch.close()
        if reg is not None:
            reg.stop()
    finally:
        d.terminate()


def _local_image(tmp: Path):  # type: ignore[no-untyped-def]
    """Start a registry, push an image and attach SPEC; (reference, registry) or (None, None)."""
    import shutil
    import uuid

    if not (shutil.which("docker-registry") and shutil.which("skopeo")):
        print("(no docker-registry/skopeo: skipping ValidateImage by reference)")
        return None, None
    import support_registry as sr

    from nodecompat.oci.attach import attach_spec

    reg = sr.RegistryProcess(tmp / f"registry-{uuid.uuid4().hex[:6]}").start()
    img = sr.push_image(reg.host, "bench/app", tmp)
    attach_spec(img.reference, SPEC, plain_http=True)
    return img.reference, reg


if __name__ == "__main__":
    main()
