"""Admission latency of `nodecompat webhook` (issue 13): a 1,000-node simulated fleet, warm and cold.

Set-up: Debian's docker-registry with IMAGES images, each with its own compatibility artifact; an
in-process aggregator whose inventory holds 1,000 simulated nodes in 20 profiles of the fixture hosts
(bench_inventory.py's FeatureStore, so ValidateFleet answers from memory as in production); the webhook as
a real `nodecompat webhook` process; this script playing the API server over HTTPS with a verified
certificate and keep-alive (as the API server does). Each request is an AdmissionReview for a pod with two
containers and an init container.
- cold: the first review of each image (its artifact resolved from the registry and parsed);
- warm: reviews of images seen before (artifact cached by digest, tag within its 30 s TTL).
The cold p99 row is the maximum of its 20 reviews, and they are not alike: review 0 is the webhook's first
and resolves 2 new images at once (2 registry resolutions, 2 new specs at the aggregator), reviews 1-18 one
new image each (a pod's second image is the next one), review 19 none. Review 0 decides that row in every
run (measured with --cold-detail: 84-242 ms against 30-70 ms for the others), so a second cold sample
follows the warm reviews: --cold-more (default 80) reviews each naming exactly one image never seen
(containers [new, seen], initContainers [new]), none the webhook's first; its rows give p50, p95 and p99.
Rows print p50 and p99 against issue 13's target (warm p99 <= 50 ms) and KEP-2403's 100 ms, and the warm
figures against a floor measured in the same run, alternated with the warm reviews: the pod's two
ValidateFleet calls made straight to the aggregator as the webhook makes them (grouped_results; what the
webhook cannot avoid); the ratio is the webhook's own share (target <= 1.5, ours). The load average is
printed beside them (the machine may be shared).

    .venv/bin/python bench/bench_webhook.py [--nodes 1000] [--images 20] [--warm 400] [--cold-more 80]
        [--cold-detail]

--cold-detail prints every cold review: its latency, the webhook's own log line for it (total, slowest registry
wait, slowest aggregator wait) and the cyclic GC pauses of this process (which hosts the aggregator) inside it.

No asserts: it prints figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
LIMIT_WARM_P99_S = 0.050  # issue 13
LIMIT_KEP_S = 0.100  # KEP-2403's own target

SPEC = """
version: v1alpha1
compatibilities:
- description: nvidia, new kernel {i}
  weight: 10
  rules:
  - name: nvidia
    matchFeatures:
    - feature: pci.device
      matchExpressions: {{vendor: {{op: In, value: ["10de"]}}}}
    - feature: kernel.version
      matchExpressions: {{major: {{op: Gt, value: ["6"]}}}}
- description: nvidia {i}
  weight: 5
  rules:
  - name: nvidia
    matchFeatures:
    - feature: pci.device
      matchExpressions: {{vendor: {{op: In, value: ["10de"]}}}}
"""


def row(name: str, value: float, limit: float, what: str) -> None:
    ratio = value / limit
    print(f"ROW {name} | {value * 1e3:.1f} ms | {what} {limit * 1e3:.0f} ms | ratio {ratio:.2f} | target <= 1 "
          f"| {'met' if ratio <= 1 else 'NOT MET'}", flush=True)


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--profiles", type=int, default=20)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--warm", type=int, default=400)
    ap.add_argument("--cold-more", type=int, default=80,
                    help="more cold reviews after the first --images ones, each with exactly one image never seen")
    ap.add_argument("--cold-detail", action="store_true",
                    help="print every cold review: its latency, the webhook's own breakdown, this process's GC pauses")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench_inventory import node_address, profiles
    from support_fleet import make_certs
    from support_registry import RegistryProcess, push_image, push_raw_artifact, subject_of
    from support_webhook import WebhookProc, pod, review

    from nodecompat.fleet.store import FeatureStore
    from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon
    from nodecompat.server.runtime.gc_tuning import tune_for_serving

    # this process hosts the aggregator: its GC set as `nodecompat aggregator` sets it at start, before any
    # node is known (the 1,000 nodes below stay in the collector's sight, as nodes registered after start do).
    # Without it a full collection of this process (~45-60 ms) landed inside one cold review in every run.
    tune_for_serving()
    tmp = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
    n, k = args.nodes, args.profiles
    print(f"webhook: {n} simulated nodes in {k} profiles (inventory), {args.images} images", flush=True)
    profs = profiles(k)
    names = [f"sim-{i:05d}" for i in range(n)]
    store = FeatureStore()
    now = time.time()
    for i in range(n):
        f = copy.deepcopy(profs[i % k]) if i < k else None
        if f is not None:
            f.add_attributes("system.name", {"nodename": names[i]})
            store.put(node_address(i, 1), names[i], f, {}, now, 1, wire_key=f"profile-{i}")
        else:
            ident = (("system.name", "nodename", names[i]),)
            store.put_known(f"profile-{i % k}", node_address(i, 1), names[i], ident, now, 1, {"profile": str(i % k)})
    nodes_file = tmp / "nodes.json"
    nodes_file.write_text(json.dumps([{"name": names[i], "address": node_address(i, 1), "labels": {}}
                                      for i in range(n)]))
    reg = RegistryProcess(tmp / "registry").start()
    agg = AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", nodes_file=str(nodes_file), sync=None))
    agg.service.store = store
    port = agg.start()
    hook = None
    try:
        images = []
        for i in range(args.images):
            img = push_image(reg.host, f"bench/app{i}", tmp)
            push_raw_artifact(reg.host, f"bench/app{i}", subject_of(img), layers=[SPEC.format(i=i).encode()])
            images.append(img.reference)
        more = []
        for i in range(args.cold_more):
            img = push_image(reg.host, f"bench/new{i}", tmp)
            push_raw_artifact(reg.host, f"bench/new{i}", subject_of(img),
                              layers=[SPEC.format(i=f"new{i}").encode()])
            more.append(img.reference)
        certs = make_certs(tmp / "pki")
        hook = WebhookProc(tmp, certs.ca, certs.cert, certs.key, f"127.0.0.1:{port}", "--allowed-registries",
                           "http://127.0.0.1:*", "--plain-http").wait_ready()

        def admit(i: int) -> tuple[float, dict]:  # type: ignore[type-arg]
            rev = review(pod(f"p{i}", [images[i % len(images)], images[(i + 1) % len(images)]],
                             init=[images[i % len(images)]]))
            t0 = time.perf_counter()
            r = hook.post("/mutate", rev)
            took = time.perf_counter() - t0
            return took, r.json()["response"]

        import gc

        gc_pauses: list[tuple[int, float]] = []  # this process (aggregator + client): (generation, seconds)
        gc_start = [0.0]

        def on_gc(phase: str, info: dict) -> None:  # type: ignore[type-arg]
            if phase == "start":
                gc_start[0] = time.perf_counter()
            else:
                gc_pauses.append((info["generation"], time.perf_counter() - gc_start[0]))

        gc.callbacks.append(on_gc)
        cold = []
        cold_gc = []
        for i in range(len(images)):  # each pod's second image is the next one: cold for both only at i=0
            del gc_pauses[:]
            took, resp = admit(i)
            cold.append(took)
            cold_gc.append(list(gc_pauses))
            assert resp["allowed"], resp
        gc.callbacks.remove(on_gc)
        if args.cold_detail:
            pattern = r"in ([\d.]+) ms \(registry ([\d.]+) ms, aggregator ([\d.]+) ms"
            inside = re.findall(pattern, hook.log.read_text())
            for i, took in enumerate(cold):
                w = inside[i] if i < len(inside) else ("?", "?", "?")
                pauses = ", ".join(f"gen{g} {d * 1e3:.1f} ms" for g, d in cold_gc[i] if d >= 0.0005) or "-"
                print(f"  cold {i:2d}: {took * 1e3:6.1f} ms | webhook {w[0]} ms (registry {w[1]}, aggregator {w[2]}) "
                      f"| GC here (aggregator+client) {pauses}", flush=True)
        # the floor: the same two ValidateFleet calls straight to the aggregator (no HTTPS, no webhook), asked
        # as the webhook asks (grouped_results), alternated with the warm reviews so both see the same load
        import concurrent.futures

        import grpc

        from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = fleet_pb2_grpc.FleetServiceStub(channel)

        def one(i: int) -> int:
            req = fleet_pb2.ValidateFleetRequest(spec=SPEC.format(i=i % len(images)), timeout_seconds=8,
                                                 grouped_results=True)
            count = 0
            for m in stub.ValidateFleet(req, timeout=9):
                kind = m.WhichOneof("item")
                if kind == "groups":
                    count += sum(len(g.node_names) for g in m.groups.groups)
                elif kind == "nodes":
                    count += len(m.nodes.nodes)
                elif kind == "node":
                    count += 1
            return count

        summary = None
        warm = []
        floor = []
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            for i in range(args.warm):
                took, resp = admit(i)
                warm.append(took)
                summary = resp
                t0 = time.perf_counter()
                assert sum(ex.map(one, (i, i + 1))) == 2 * n
                floor.append(time.perf_counter() - t0)
        channel.close()
        # the second cold sample, after the warm reviews (so the rows above are measured as before): reviews
        # each naming exactly one image never seen (containers [new, seen], initContainers [new]), none of them
        # the webhook's first review
        cold_one = []
        for j, new in enumerate(more):
            rev = review(pod(f"n{j}", [new, images[0]], init=[new]))
            t0 = time.perf_counter()
            resp = hook.post("/mutate", rev).json()["response"]
            cold_one.append(time.perf_counter() - t0)
            assert resp["allowed"], resp
        assert summary is not None and "patch" in summary
        print(f"  ({len(cold)} cold, {len(warm)} warm reviews; a warm answer places the pod on "
              f"{n // 3}-ish of {n} nodes by name)", flush=True)
        row(f"webhook admission, warm p50 ({n} nodes)", p(warm, 50), LIMIT_WARM_P99_S, "issue 13 warm p99 limit")
        row(f"webhook admission, warm p99 ({n} nodes)", p(warm, 99), LIMIT_WARM_P99_S, "issue 13 warm p99 limit")
        row(f"webhook admission, cold p50 ({n} nodes, artifact from the registry)", p(cold, 50), LIMIT_KEP_S,
            "KEP-2403 target")
        row(f"webhook admission, cold p99 ({n} nodes, artifact from the registry)", p(cold, 99), LIMIT_KEP_S,
            "KEP-2403 target")
        print(f"  (p99 of {len(cold)} lies between its two slowest reviews; review 0 is the webhook's first and "
              f"resolves 2 new images, reviews 1-{len(cold) - 2} one each, review {len(cold) - 1} none; review 0 took "
              f"{cold[0] * 1e3:.1f} ms, the slowest of the others {max(cold[1:]) * 1e3:.1f} ms)", flush=True)
        if cold_one:
            for q in (50, 95, 99):
                row(f"webhook admission, cold p{q} ({n} nodes, {len(cold_one)} reviews of one new image each)",
                    p(cold_one, q), LIMIT_KEP_S, "KEP-2403 target")
        print(f"  load average {Path('/proc/loadavg').read_text().split()[0]}; floor: the pod's two ValidateFleet "
              f"calls straight to the aggregator (gRPC, grouped, {n} nodes each): "
              f"p50 {p(floor, 50) * 1e3:.1f} ms, p99 {p(floor, 99) * 1e3:.1f} ms", flush=True)
        for q in (50, 99):  # the webhook's own share: its latency over the floor measured in this run
            ratio = p(warm, q) / p(floor, q)
            print(f"ROW webhook admission warm p{q} vs the aggregator floor p{q} | {p(warm, q) * 1e3:.1f} ms | floor "
                  f"{p(floor, q) * 1e3:.1f} ms (same run) | ratio {ratio:.2f} | target <= 1.5 "
                  f"| {'met' if ratio <= 1.5 else 'NOT MET'}", flush=True)
        # where a warm answer's time goes, from the webhook's own log (the slowest image's waits)
        pattern = r"in ([\d.]+) ms \(registry ([\d.]+) ms, aggregator ([\d.]+) ms"
        logged = [tuple(map(float, m)) for m in re.findall(pattern, hook.log.read_text())]
        waits = logged[len(images) : len(images) + len(warm)]  # the warm reviews' lines
        if waits:
            print("  warm, inside the webhook (median): total {:.1f} ms = registry cache {:.1f} ms + aggregator "
                  "ValidateFleet {:.1f} ms + the rest".format(*(statistics.median(w[j] for w in waits)
                                                               for j in range(3))), flush=True)
    finally:
        if hook is not None:
            hook.stop()
        agg.stop(grace=0)
        reg.stop()


if __name__ == "__main__":
    main()
