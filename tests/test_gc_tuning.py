"""server/runtime/gc_tuning.py: what `nodecompat aggregator` and `nodecompat webhook` set before serving (in a child
interpreter: the setting is process-wide and must not leak into the test process)."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import gc
from nodecompat.server.runtime.gc_tuning import GC_GEN0_THRESHOLD, tune_for_serving
before = gc.get_threshold()
start_up = [object() for _ in range(3)] + [[] for _ in range(3)]  # tracked start-up state
tune_for_serving()
after = gc.get_threshold()
assert after == (GC_GEN0_THRESHOLD, before[1], before[2]), (before, after)
assert gc.get_freeze_count() > len(start_up)  # start-up objects frozen out of the collector's sight
assert not any(o is start_up for o in gc.get_objects())
late = []
late.append(late)  # cyclic garbage made while serving is still collected
del late
assert gc.collect() >= 1
print("ok", after[0])
"""


def test_tune_for_serving_freezes_start_up_and_collects_young_objects_less_often() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "10000"]
