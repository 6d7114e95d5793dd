"""Parse and match `os[/arch[/variant]][:os_version]` platform strings the way NFD's client does.

Parsing follows NFD's `options/platform.go` (oras CLI's option): `linux` alone means the client's own
architecture in Go's naming (GOARCH), more than three `/` parts or an empty os/arch is an error.
Matching follows oras-go's `platform.Match`: os and architecture must be equal; variant and os_version
only count when asked for. The first matching index entry wins, as in oras-go.
"""

from __future__ import annotations

import platform as _host_platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodecompat.oci.errors import InvalidArgumentError

# Python's machine() names -> Go's GOARCH names (what OCI indexes use).
_GOARCH = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
    "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
    "riscv64": "riscv64", "mips64": "mips64", "loongarch64": "loong64",
}


def host_goarch() -> str:
    machine = _host_platform.machine().lower()
    return _GOARCH.get(machine, machine)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    def matches(self, candidate: Mapping[str, Any] | None) -> bool:
        """True if an index entry's `platform` object satisfies this wanted platform."""
        if not isinstance(candidate, Mapping):
            return False
        if candidate.get("os") != self.os or candidate.get("architecture") != self.architecture:
            return False
        if self.variant and candidate.get("variant") != self.variant:
            return False
        return not (self.os_version and candidate.get("os.version") != self.os_version)

    def __str__(self) -> str:
        text = "/".join(p for p in (self.os, self.architecture, self.variant) if p)
        return f"{text}:{self.os_version}" if self.os_version else text


def parse_platform(text: str) -> Platform:
    """Parse `os[/arch[/variant]][:os_version]`; raise InvalidArgumentError on a malformed string."""
    if not isinstance(text, str) or not text:
        raise InvalidArgumentError("platform is empty: expected os[/arch[/variant]][:os_version]")
    main, _, os_version = text.partition(":")
    parts = main.split("/")
    if len(parts) > 3:
        raise InvalidArgumentError(
            f"invalid platform {text!r}: expected os[/arch[/variant]][:os_version]"
        )
    os_name = parts[0]
    arch = parts[1] if len(parts) > 1 else host_goarch()
    variant = parts[2] if len(parts) > 2 else ""
    if not os_name:
        raise InvalidArgumentError(f"invalid platform {text!r}: os cannot be empty")
    if not arch:
        raise InvalidArgumentError(f"invalid platform {text!r}: architecture cannot be empty")
    return Platform(os_name, arch, variant, os_version)
