"""glibc malloc settings for a long-running server process (the aggregator): few arenas, freed pages returned.

glibc gives a thread that allocates while another thread holds an arena's lock an arena of its own, up to
8 per core, and each arena keeps resident the pages its freed blocks leave behind. The aggregator's
threads all allocate: gRPC core's event-engine pool (it grows from ~4 to ~7 threads during a fan-out),
the server's event loop, the executor's workers, the inventory's thread. Measured with 1,000 simulated
nodes (bench/bench_fleet.py's aggregator, /proc/self/smaps and malloc_info): after four fan-outs that keep
no connection (pool budget of one), the process had 16 arenas, the six new ones 1.1-2.2 MiB resident each
and mostly free, and RSS had grown 14.4 MiB (14.4 KiB per node); with M_ARENA_MAX=1 8.4, with 2 9.8 MiB.
Alternated runs (4 each, load ~20): 227 connections kept, 19.2-21.9 -> 14.5-16.6 KiB per node right after
(what lets `--pool-mib 8` meet 20 KiB at 1,000 nodes); all 1,000 kept, 34.8-36.6 -> 34.2-34.6; 10,000 nodes
(2,730 kept) 10.7-11.0 -> 10.9-11.2, no gain there. Fewer arenas cost some lock contention between those
threads; the process's CPU per node (os.times) did not change measurably: 1,000 nodes 513-680 vs 523-623 us,
227 kept 953-1077 vs 937-1030, 10,000 nodes 999-1114 vs 990-1154.

Hand-written through ctypes because no maintained library wraps mallopt or malloc_trim; both are no-ops
where the C library is not glibc. An operator's own MALLOC_ARENA_MAX (or glibc.malloc.arena_max in
GLIBC_TUNABLES) is left alone; GLIBC_TUNABLES about other things (glibc.pthread.rseq=0 ...) keeps the cap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
ARENAS = 2  # arenas for the whole process (glibc's default: 8 per core)

_libc: ctypes.CDLL | bool | None = None  # None: not looked up yet; False: not glibc


def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (has mallopt, malloc_trim), else None."""
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    return _libc if isinstance(_libc, ctypes.CDLL) else None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap the process's malloc arenas at `arenas` (>= 1) unless MALLOC_ARENA_MAX is set or GLIBC_TUNABLES
    sets glibc.malloc.arena_max.
    Call once from a server process's entry point, before it starts its threads (a thread keeps the arena
    it already has). True when the cap was set. ValueError for arenas < 1."""
    if arenas < 1:
        raise ValueError("arenas must be >= 1")
    if os.environ.get("MALLOC_ARENA_MAX") or "glibc.malloc.arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the operator's choice (GLIBC_TUNABLES about other things says nothing about arenas)
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1)


def malloc_trim() -> None:
    """glibc's malloc_trim(0): give the free pages of every arena back to the OS (no-op elsewhere)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
