"""libc probe: `system.libc` (not in NFD): which C library the host has and its version.

Images fail at run time with "version `GLIBC_2.34' not found"; NFD has no libc source (its libc PR
was closed), so this is a nodecompat addition. Read from the host root's files, never by running
host code (`ldd --version` would execute the host's loader):
- glibc: the first readable libc.so.6 of the usual locations (multiarch /lib/<triplet>/, /lib64,
  /usr/lib64, /lib, /usr/lib; usrmerge links resolve inside the root). Every glibc carries the
  banner it prints when executed, "GNU C Library (<vendor> GLIBC 2.36-9) stable release version
  2.36." (csu/version.c); `version` is that release version, the same number `ldd --version` ends
  with. The file (~2 MB) is read once and the result kept while its identity is unchanged
  (parsecache), so a probe round does not re-read it.
- musl: the dynamic loader /lib/ld-musl-<arch>.so.1 (which is musl's libc.so). musl keeps its
  version in a hidden symbol, not in any string a file read can find reliably, so `version` comes
  from the package database when there is one (Alpine's /lib/apk/db/installed, package `musl`,
  `V:1.2.4-r2` -> 1.2.4); otherwise it is left out and the probe status says so.
A host with neither gets no system.libc (status says why). Hand-written: no maintained library
reads a libc version from a file without loading it.
"""

from __future__ import annotations

import functools
import re

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes import parsecache
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput

GLIBC_PATHS = (
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib/aarch64-linux-gnu/libc.so.6",
    "/lib/powerpc64le-linux-gnu/libc.so.6",
    "/lib/s390x-linux-gnu/libc.so.6",
    "/lib64/libc.so.6",
    "/usr/lib64/libc.so.6",
    "/lib/libc.so.6",
    "/usr/lib/libc.so.6",
)
APK_DB = "/lib/apk/db/installed"
MAX_LIBC_BYTES = 16 << 20
_BANNER = re.compile(rb"GNU C Library [^\n\x00]{0,200}? release version (\d+\.\d+(?:\.\d+)?)")
_MUSL_LOADER = re.compile(r"^ld-musl-[A-Za-z0-9_]+\.so\.1$")
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def glibc_version(data: bytes) -> str | None:
    """The release version in glibc's banner ('2.36'), or None when the bytes hold no banner."""
    m = _BANNER.search(data)
    return m.group(1).decode() if m else None


def apk_package_version(text: str, package: str) -> str | None:
    """Upstream version of `package` in an apk installed database ('1.2.4-r2' -> '1.2.4')."""
    for block in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if len(line) > 2 and line[1] == ":")
        if fields.get("P") == package and "V" in fields:
            return fields["V"].rsplit("-r", 1)[0]
    return None


def split(version: str) -> dict[str, str]:
    m = _VERSION.match(version)
    if not m:
        return {}
    out = {"major": m.group(1), "minor": m.group(2)}
    if m.group(3):
        out["revision"] = m.group(3)
    return out


def _read_glibc(host: HostRoot, path: str) -> str | None:
    try:
        data = host.open_bytes(path, max_bytes=MAX_LIBC_BYTES)
    except OSError:
        return None
    return glibc_version(data) or ""


class LibcProbe(Probe):
    name = "libc"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    features = (
        FeatureInfo(
            "system.libc",
            frozenset({"attribute"}),
            absent="absent when no glibc libc.so.6 or musl loader is found",
            attributes=(
                AttributeInfo("implementation", "string", "libc.so.6 / ld-musl-<arch>.so.1", nfd=False,
                              description="glibc or musl"),
                AttributeInfo("version", "version", "glibc banner in libc.so.6; musl: /lib/apk/db/installed",
                              nfd=False, description="e.g. 2.36, as ldd --version reports"),
                AttributeInfo("major", "int", "version", nfd=False),
                AttributeInfo("minor", "int", "version", nfd=False),
                AttributeInfo("revision", "int", "version", nfd=False, description="only when the version has one"),
                AttributeInfo("path", "string", "", nfd=False, description="the library read, under the host root"),
            ),
            nfd=False,
            source="/lib*/libc.so.6, /lib/ld-musl-<arch>.so.1",
            description="the host's C library (nodecompat addition; NFD has none)",
        ),
    )  # fmt: skip

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        for path in GLIBC_PATHS:
            if not host.is_file(path):
                continue
            version = parsecache.parsed(host, path, "glibc-version", functools.partial(_read_glibc, host, path))
            if version is None:
                continue
            attrs = {"implementation": "glibc", "path": path}
            if version:
                attrs.update({"version": version, **split(version)})
            else:
                out.notes.append(f"{path} has no glibc release banner: system.libc version left out")
            out.features.add_attributes("system.libc", attrs)
            return out
        musl = [n for n in host.listdir("/lib") if _MUSL_LOADER.match(n)]
        if musl:
            attrs = {"implementation": "musl", "path": f"/lib/{musl[0]}"}
            db = host.read_text(APK_DB)
            version = apk_package_version(db, "musl") if db else None
            if version:
                attrs.update({"version": version, **split(version)})
            else:
                out.notes.append(f"musl found but no package database ({APK_DB}) names its version: version left out")
            out.features.add_attributes("system.libc", attrs)
            return out
        out.notes.append("no glibc libc.so.6 (/lib*, /usr/lib*) nor musl loader (/lib/ld-musl-*): system.libc left out")
        return out
