"""server/malloc_tuning.py: the aggregator process caps glibc's malloc arenas before its threads start.

Real processes: a child Python allocates from many threads at once and reports how many arenas glibc made
(malloc_info's <heap> elements), with and without limit_arenas(), and with an operator's MALLOC_ARENA_MAX.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from nodecompat.server.malloc_tuning import _glibc, limit_arenas

CHILD = textwrap.dedent(
    """
    import ctypes, sys, tempfile, threading
    from nodecompat.server.malloc_tuning import limit_arenas
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


def test_limit_arenas_refuses_a_count_below_one() -> None:
    with pytest.raises(ValueError, match="arenas"):
        limit_arenas(0)
