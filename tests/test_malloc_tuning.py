"""server/runtime/malloc_tuning.py: the aggregator process caps glibc's malloc arenas before its threads start.

Real processes: a child Python allocates from many threads at once and reports how many arenas glibc made
(malloc_info's <heap> elements), with and without limit_arenas(), and with an operator's MALLOC_ARENA_MAX;
a `nodecompat aggregator` process under load, its thread-arena heaps read from /proc/PID/maps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support_daemon import free_port
from support_fleet import SPEC_ANY, start_aggregator_process

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.server.runtime.malloc_tuning import _glibc, limit_arenas

CHILD = textwrap.dedent(
    """
    import ctypes, sys, tempfile, threading
    from nodecompat.server.runtime.malloc_tuning import limit_arenas
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    print(limit_arenas() if sys.argv[1] == "limit" else "-")
    go = threading.Barrier(8)

    def work():  # eight threads allocating at the same time: glibc spreads them over arenas
        go.wait()
        for _ in range(20000):
            libc.free(libc.malloc(256))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with tempfile.NamedTemporaryFile("r") as f:
        fp = libc.fopen(f.name.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        print(f.read().count("<heap nr="))
    """
)


def _arenas(mode: str, **env: str) -> tuple[str, int]:
    base = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    r = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60,
                       env={**base, **env}, check=True)
    said, arenas = r.stdout.split()
    return said, int(arenas)


@pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt and malloc_info")
def test_limit_arenas_caps_the_arenas_of_threads_started_after_it() -> None:
    said, capped = _arenas("limit")
    assert said == "True" and capped <= 2
    _, default = _arenas("none")
    assert default > 2  # glibc's own default gives concurrent threads arenas of their own (the test can fail)


@pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt and malloc_info")
def test_an_operators_malloc_arena_max_is_left_alone() -> None:
    said, arenas = _arenas("limit", MALLOC_ARENA_MAX="4")
    assert said == "False" and 2 < arenas <= 4


@pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt and malloc_info")
def test_glibc_tunables_about_something_else_still_get_the_cap() -> None:
    """GLIBC_TUNABLES set for another reason (a container image's glibc.pthread.rseq=0, a CPU tunable) says
    nothing about arenas: the cap still applies; one naming glibc.malloc.arena_max is the operator's choice."""
    said, arenas = _arenas("limit", GLIBC_TUNABLES="glibc.pthread.rseq=0:glibc.malloc.check=0")
    assert said == "True" and arenas <= 2
    said, arenas = _arenas("limit", GLIBC_TUNABLES="glibc.pthread.rseq=0:glibc.malloc.arena_max=4")
    assert said == "False" and 2 < arenas <= 4


def test_limit_arenas_refuses_a_count_below_one() -> None:
    with pytest.raises(ValueError, match="arenas"):
        limit_arenas(0)


HEAP_MAX = 64 * 1024 * 1024  # glibc: a thread arena's heaps are mmapped at this alignment on 64-bit


def _arena_heaps(pid: int) -> int:
    """Thread-arena heaps of a process: anonymous mappings starting on a 64 MiB boundary (the main arena is
    the brk [heap]; thread stacks, pymalloc arenas and other mmaps are not so aligned)."""
    count = 0
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        start = int(fields[0].split("-")[0], 16)
        if len(fields) == 5 and "rw" in fields[1] and start % HEAP_MAX == 0:
            count += 1
    return count


def _busy_aggregator(tmp: Path, **env: str) -> int:
    """Start `nodecompat aggregator` over 64 nodes nobody answers, keep its threads allocating (concurrent
    ValidateFleet and ListNodes calls), and count its thread-arena heaps."""
    nodes = tmp / f"nodes-{len(env)}.json"
    port = free_port()
    nodes.write_text(json.dumps([{"name": f"n{i}", "address": f"127.0.1.{1 + i}:{port}"} for i in range(64)]))
    base = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    agg = start_aggregator_process(tmp, "--nodes-file", str(nodes), env={**base, **env})
    try:
        def call(i: int) -> None:
            with FleetClient(agg.address) as client:
                if i % 2:
                    client.validate(spec_text=SPEC_ANY, timeout=2)
                else:
                    client.list_nodes()

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(call, range(48)))
        return _arena_heaps(agg.proc.pid)
    finally:
        assert agg.terminate() == 0


@pytest.mark.skipif(_glibc() is None, reason="glibc's arenas")
def test_the_aggregator_process_caps_its_arenas(tmp_path: Path) -> None:
    """`nodecompat aggregator` calls limit_arenas before its threads start: one thread-arena heap at most
    (two arenas, the main one on the brk heap); with the operator's MALLOC_ARENA_MAX=16 (glibc's default on
    two cores) the same load spreads over more (the test can fail)."""
    assert _busy_aggregator(tmp_path) <= 1
    assert _busy_aggregator(tmp_path, MALLOC_ARENA_MAX="16") > 1
