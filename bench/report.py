"""`make bench`: issue 11's table in one run, every row a figure beside a limit measured in the same run.

Runs, one after another (so they do not compete for the 2 cores):
- bench/bench_daemon.py — ValidateImage cached/uncached vs Health/Check, nodecompat vs bare gRPC server, daemon RSS;
- bench/bench_probes.py --rows — a probe round vs bare reads of the same files: (a) a runner's first round (no
  memo), (b) a steady round of a long-lived runner on an unchanged host (probes/probe_memo.py), run as the
  daemon's refresh loop runs it (on its own thread, no hand-off: probes/round_watchdog.py), / and h100-server;
- bench/bench_fleet.py — fleet wall time and per-node cost at 10, 100, 1,000 and 10,000 simulated nodes,
  aggregator RSS per known node, and the fan-out vs grpc.aio floor row, for the aggregator's default fan-out
  transport and then the other (`--fanout-transport` grpc / h2);
- bench/bench_cli.py (when present) — CLI start-up rows;
- bench/bench_inventory.py — issue 12 at 10,000 nodes in 20 profiles: ValidateFleet from the inventory, store
  memory, resubscribe, the push model (RSS, heartbeats, re-registration) and restarts with --state-file;
- bench/bench_webhook.py — admission latency p50/p99 of `nodecompat webhook`, 1,000 nodes, warm and cold;
- bench/bench_store_etcd.py — replicas over a three-member etcd: registration-to-visible latency across
  replicas and ValidateFleet through each replica, 1,000 registered nodes; the inventory shared out among three
  replicas (ValidateFleet from the inventory through each, and a replica's death taken over);
then prints every `ROW` line again as one table. Each row is the median of 3 with min and max. Prints
figures; asserts nothing (this machine is shared: read ratios, not absolute times).

Usage: .venv/bin/python bench/report.py [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def run(script: str, *args: str) -> list[str]:
    path = BENCH / script
    if not path.exists():
        print(f"== {script}: not present, skipped")
        return []
    print(f"== {script} {' '.join(args)}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True)
    out = proc.stdout.splitlines()
    for line in out:
        print(f"   {line}")
    if proc.returncode != 0:
        print(f"   ({script} exited {proc.returncode}: {proc.stderr.strip()[-400:]})")
    print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)
    return [line[4:] for line in out if line.startswith("ROW ")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (1,000 nodes at most; shorter figures)")
    args = ap.parse_args()
    t0 = time.monotonic()
    rows: list[str] = []
    rows += run("bench_daemon.py", *(["--seconds", "0.7", "--uncached-calls", "30"] if args.quick else []))
    rows += run("bench_probes.py", "--rows", "--runs", "9")
    rows += run("bench_fleet.py", "--sizes", "10,100,1000" if args.quick else "10,100,1000,10000")
    rows += run("bench_cli.py")
    rows += run("bench_inventory.py", *(["--nodes", "1000"] if args.quick else []))
    rows += run("bench_webhook.py", *(["--warm", "100", "--images", "5", "--cold-more", "10"] if args.quick else []))
    rows += run("bench_store_etcd.py", *(["--sample", "20"] if args.quick else []))
    print("\n== issue 11 table: figure | limit measured in the same run | ratio | target (median of 3, min, max)")
    for r in rows:
        print("  " + r)
    print(f"(make bench took {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
