"""OCI figures: a cold fetch_compat_spec (new connections, full discovery and download) against a
warm SpecCache.fetch (both layers hit) and a tag-expired SpecCache.fetch (discovery again, spec by
digest from memory), on a local Debian docker-registry — both through the referrers tag schema
(what distribution 2.8 offers) and through the referrers API (tests/support_registry.RegistryProxy).
Prints figures; asserts nothing.

Usage: .venv/bin/python bench/bench_oci.py [--cold N] [--warm N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import support_registry as sr

from nodecompat.oci.attach import attach_spec
from nodecompat.oci.cache import SpecCache
from nodecompat.oci.discovery import fetch_compat_spec


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def report(label: str, samples: list[float]) -> None:
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    print(f"  {label:44} n={len(samples):5}  median {statistics.median(samples) * 1e3:8.3f} ms"
          f"  p95 {p95 * 1e3:8.3f} ms")


def bench(ref: str, cold: int, warm: int) -> None:
    report("cold fetch_compat_spec", timed(lambda: fetch_compat_spec(ref, plain_http=True), cold))
    cache = SpecCache()
    cache.fetch(ref, plain_http=True)
    report("warm SpecCache.fetch (tag + spec hit)", timed(lambda: cache.fetch(ref, plain_http=True), warm))
    retag = SpecCache(tag_ttl=0)
    retag.fetch(ref, plain_http=True)
    report("SpecCache.fetch, tag expired, spec hit", timed(lambda: retag.fetch(ref, plain_http=True), cold))
    print(f"  cache counters: {cache.stats()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", type=int, default=30)
    parser.add_argument("--warm", type=int, default=2000)
    args = parser.parse_args()
    if not sr.HAVE_TOOLS:
        print("needs docker-registry and skopeo on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        reg = sr.RegistryProcess(Path(tmp) / "reg").start()
        try:
            img = sr.push_image(reg.host, "bench/app", Path(tmp))
            attach_spec(img.reference, sr.spec_yaml(note="bench"), plain_http=True)
            print(f"registry: docker-registry at {reg.host}, referrers tag schema")
            bench(img.reference, args.cold, args.warm)
            with sr.RegistryProxy(reg.host, referrers=True) as proxy:
                img2 = sr.push_image(proxy.host, "bench/api", Path(tmp))
                attach_spec(img2.reference, sr.spec_yaml(note="bench"), plain_http=True)
                print(f"registry: in-process referrers-API proxy at {proxy.host} in front of it")
                bench(img2.reference, args.cold, args.warm)
        finally:
            reg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
