"""The one build step pyproject.toml cannot say: the optional C helper of the probe rounds.

probes/_hostc.c (nodecompat.probes._hostc: openat2 and a steady round's batch replay in C; why in its
header). optional=True: on a box without a compiler `pip install` still succeeds and the probe rounds use
the ctypes path (probes/host_c.py says which is in use).
"""

import zlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = Path(__file__).resolve().parent / "probes" / "_hostc.c"

setup(
    ext_modules=[
        Extension(
            "nodecompat.probes._hostc",
            sources=["probes/_hostc.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall"],
            # probes/host_c.py uses the module only with the source it was built from (a stale editable build)
            define_macros=[("HOSTC_SOURCE_CRC32", f'"{zlib.crc32(SOURCE.read_bytes()):08x}"')],
        )
    ]
)
