"""The one build step pyproject.toml cannot say: the optional C helper of the probe rounds.

probes/_hostc.c (nodecompat.probes._hostc: openat2 and a steady round's batch replay in C; why in its
header). optional=True: on a box without a compiler `pip install` still succeeds and the probe rounds use
the ctypes path (probes/host_c.py says which is in use).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "nodecompat.probes._hostc",
            sources=["probes/_hostc.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall"],
        )
    ]
)
