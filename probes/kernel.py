"""kernel probe: NFD's kernel.version, kernel.config, kernel.loadedmodule, kernel.enabledmodule,
kernel.selinux and kernel.kvm, derived exactly as NFD's source/kernel derives them.

Monolithic kernels (CONFIG_MODULES unset, like this sandbox's) have no /proc/modules. NFD logs the
read error and leaves kernel.loadedmodule out; we do the same and say so in a probe note, rather
than fail the probe or invent an empty module set that a rule would read as "nothing loaded".
kernel.enabledmodule follows NFD too: loaded modules plus the basenames in
/lib/modules/<version>/modules.builtin, and absent when that file cannot be read (on such a kernel
/sys/module still lists built-ins, but NFD does not look there, so neither do we).
"""

from __future__ import annotations

import gzip
import re
import threading
import zlib

from nodecompat.features import AttributeFeature, Features, FlagFeature
from nodecompat.hostroot import HostRoot
from nodecompat.probes import parsecache
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput

OSRELEASE = "/proc/sys/kernel/osrelease"
MODULES = "/proc/modules"
SELINUX_ENFORCE = "/sys/fs/selinux/enforce"
KVM_DEVICE = "/sys/devices/virtual/misc/kvm"

_FORBIDDEN = re.compile(r"[^-A-Za-z0-9_.]")
_VERSION = re.compile(r"^(?P<major>\d+)(\.(?P<minor>\d+))?(\.(?P<revision>\d+))?(-.*)?$")


def parse_kernel_version(osrelease: str) -> dict[str, str]:
    """NFD's kernel.version: sanitised `full`, and major/minor/revision ("" when a part is missing).

    >>> parse_kernel_version("6.8")["revision"]
    ''
    """
    full = _FORBIDDEN.sub("_", osrelease.strip()).strip("-_.")
    out = {"full": full}
    m = _VERSION.match(full)
    if m:
        out.update({k: v or "" for k, v in m.groupdict().items()})
    return out


_VERSIONS: dict[str, dict[str, str]] = {}  # osrelease -> parse_kernel_version's answer (shared: not changed)
MAX_KEPT_TEXT = 256 << 10  # a text kept as a key below is at most this long (/proc/modules: ~10 KB)
MAX_KEPT = 8  # entries of each cache below; cleared when full


def _kernel_version(release: str) -> dict[str, str]:
    """parse_kernel_version(release), once per distinct release (a short line); shared: not to be changed."""
    got = _VERSIONS.get(release)
    if got is None:
        got = parse_kernel_version(release)
        if len(release) <= 4096:
            if len(_VERSIONS) >= MAX_KEPT:
                _VERSIONS.clear()
            _VERSIONS[release] = got
    return got


def kconfig_search_paths(version: str | None) -> list[str]:
    """NFD's kernel config search order (after a configured kconfigFile)."""
    if not version:
        return ["/proc/config.gz", "/usr/src/linux/.config"]
    v = version
    return [
        "/proc/config.gz",
        f"/usr/src/linux-{v}/.config",
        f"/usr/src/linux-rt-{v}/.config",
        "/usr/src/linux/.config",
        f"/usr/lib/modules/{v}/config",
        f"/usr/lib/ostree-boot/config-{v}",
        f"/usr/lib/kernel/config-{v}",
        f"/usr/src/linux-headers-{v}/.config",
        f"/lib/modules/{v}/build/.config",
        f"/usr/src/linux-rt-headers-{v}/.config",
        f"/boot/config-{v}",
    ]


def parse_kconfig(text: str) -> dict[str, str]:
    """`CONFIG_X=val` lines -> {X: val} with surrounding double quotes stripped (NFD's realKconfig).

    `# CONFIG_X is not set` lines do not start with CONFIG_ and so are skipped (X stays absent).
    """
    out: dict[str, str] = {}
    for line in text.split("\n"):
        if not line.startswith("CONFIG_"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            continue
        out[name[len("CONFIG_") :]] = value.strip('"')
    return out


def read_kconfig(
    host: HostRoot, version: str | None, config_file: str | None = None
) -> tuple[str, str] | None:
    """(host path, text) of the first readable kernel config, or None."""
    paths = ([config_file] if config_file else []) + kconfig_search_paths(version)
    for p in paths:
        if p.endswith(".gz"):
            raw = host.read_bytes(p)
            if raw is None:
                continue
            try:
                return p, gzip.decompress(raw).decode(errors="replace")
            except (OSError, EOFError, zlib.error):
                continue
        else:
            text = host.read_text(p)
            if text is not None and host.is_file(p):
                return p, text
    return None


def kconfig(host: HostRoot, version: str | None, config_file: str | None = None) -> tuple[str, dict[str, str]] | None:
    """(host path, parsed config) of the first readable kernel config, or None (read_kconfig + parse_kconfig).

    The parse is kept between rounds while the file's identity (inode, size, mtime) is unchanged
    (probes/parsecache.py); the returned dict is shared and must not be changed."""
    found = kconfig_feature(host, version, config_file)
    return None if found is None else (found[0], found[1].elements)


def kconfig_feature(host: HostRoot, version: str | None,
                    config_file: str | None = None) -> tuple[str, AttributeFeature] | None:
    """kconfig() as the kernel.config feature: (host path, AttributeFeature of the parse), the same object
    while the file's identity is unchanged (parsecache), shared by the rounds' features: not to be changed."""
    paths = ([config_file] if config_file else []) + kconfig_search_paths(version)
    for p in paths:
        ident = parsecache.identity(host, p)
        if ident is None:  # missing, or not a regular file
            continue

        def parse(p: str = p) -> AttributeFeature | None:
            found = read_kconfig(host, None, p)
            return None if found is None or found[0] != p else AttributeFeature(parse_kconfig(found[1]))

        cfg = parsecache.parsed(host, p, "kconfig", parse, ident)  # the identity just taken: one stat
        if cfg is not None:
            return p, cfg
    return None


def parse_modules(text: str) -> set[str]:
    """Module names: the first column of each /proc/modules line."""
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def parse_builtin_modules(text: str) -> set[str]:
    """modules.builtin lines (kernel/drivers/.../vfio-pci.ko) -> basenames without .ko."""
    out = set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if not line.endswith(".ko"):
            continue  # NFD getBuiltinModules(): only lines ending in .ko
        out.add(line.rsplit("/", 1)[-1][: -len(".ko")])
    return out


def builtin_modules(host: HostRoot, path: str) -> frozenset[str] | None:
    """parse_builtin_modules of host file `path` (modules.builtin), None when unreadable. The parse is kept
    between rounds while the file's identity is unchanged (probes/parsecache.py, as the kernel config: a
    distribution kernel's file has ~1,000-6,000 lines and does not change while the kernel runs); a path
    that is not a regular file is read and parsed each time, as before, and one that cannot be stat'ed
    (missing) is not read. Shared: not to be changed."""
    st = parsecache.stat_result(host, path)
    if st is None:  # missing: nothing to read
        return None
    ident = parsecache.identity_of(st)
    if ident is None:  # not a regular file: read as before, nothing kept
        text = host.read_text(path)
        return None if text is None else frozenset(parse_builtin_modules(text))

    def parse() -> frozenset[str] | None:
        text = host.read_text(path)
        return None if text is None else frozenset(parse_builtin_modules(text))

    return parsecache.parsed(host, path, "modules.builtin", parse, ident)


# /proc/modules text -> [kernel.loadedmodule, (the builtin set, kernel.enabledmodule made with it) or None]:
# flag features made once per distinct text (and modules.builtin parse), shared by the rounds' features (not
# to be changed); at most MAX_KEPT texts of at most MAX_KEPT_TEXT characters, each with a builtin set of at
# most MAX_KEPT_TEXT characters of names (a real one: ~6,000 names, ~80 KB), cleared when full.
_MODULE_FLAGS: dict[str | None, list[object]] = {}
_lock = threading.Lock()


def _module_flags(modules: str | None, builtin: frozenset[str] | None) -> tuple[FlagFeature, FlagFeature | None]:
    """(kernel.loadedmodule of the /proc/modules text `modules` (None: unreadable, an empty set), and
    kernel.enabledmodule: those plus `builtin`, None when `builtin` is None), made once per distinct input
    (`builtin` by identity: parsecache's object while modules.builtin is unchanged)."""
    kept = _MODULE_FLAGS.get(modules)
    if kept is None:
        kept = [FlagFeature(parse_modules(modules) if modules is not None else set()), None]
        if modules is None or len(modules) <= MAX_KEPT_TEXT:
            with _lock:
                if len(_MODULE_FLAGS) >= MAX_KEPT:
                    _MODULE_FLAGS.clear()
                _MODULE_FLAGS[modules] = kept
    loaded = kept[0]
    assert isinstance(loaded, FlagFeature)
    if builtin is None:
        return loaded, None
    pair = kept[1]  # one object, replaced whole: a thread never pairs one set with another's union
    if isinstance(pair, tuple) and pair[0] is builtin:
        return loaded, pair[1]
    enabled = FlagFeature(loaded.elements | builtin)
    if sum(map(len, builtin)) <= MAX_KEPT_TEXT:  # names of a long file (not kept by parsecache either): not kept
        kept[1] = (builtin, enabled)
    return loaded, enabled


class KernelProbe(Probe):
    """Kernel facts, from procfs/sysfs/config files under the host root."""

    name = "kernel"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    features = (
        FeatureInfo(
            "kernel.version",
            frozenset({"attribute"}),
            absent="absent when /proc/sys/kernel/osrelease is unreadable",
            attributes=(
                AttributeInfo("full", "string", OSRELEASE, description="sanitised release string"),
                AttributeInfo("major", "int", OSRELEASE, description='"" when absent'),
                AttributeInfo("minor", "int", OSRELEASE, description='"" when absent'),
                AttributeInfo("revision", "int", OSRELEASE, description='"" when absent'),
            ),
            source=OSRELEASE,
        ),
        FeatureInfo(
            "kernel.config",
            frozenset({"attribute"}),
            absent="absent when no kernel config file is readable",
            attributes=None,
            source="/proc/config.gz, /boot/config-<version>, ...",
            description="every CONFIG_X=val as X: val (y, m, number or unquoted string)",
        ),
        FeatureInfo(
            "kernel.loadedmodule",
            frozenset({"flag"}),
            absent="absent when /proc/modules is unreadable (kernels without modules)",
            source=MODULES,
            description="module names; absent on kernels without /proc/modules",
        ),
        FeatureInfo(
            "kernel.enabledmodule",
            frozenset({"flag"}),
            absent="absent when modules.builtin is unreadable",
            source=MODULES + " + /lib/modules/<version>/modules.builtin",
            description="loaded plus built-in; absent when modules.builtin is unreadable",
        ),
        FeatureInfo(
            "kernel.selinux",
            frozenset({"attribute"}),
            absent='enabled: "false" without /sys/fs/selinux/enforce; absent when /sys/fs is missing',
            attributes=(AttributeInfo("enabled", "bool", SELINUX_ENFORCE),),
            source=SELINUX_ENFORCE,
        ),
        FeatureInfo(
            "kernel.kvm",
            frozenset({"attribute"}),
            absent='enabled: "false" without /sys/devices/virtual/misc/kvm',
            attributes=(AttributeInfo("enabled", "bool", KVM_DEVICE),),
            source=KVM_DEVICE,
        ),
    )

    def __init__(self, kconfig_file: str | None = None) -> None:
        self.kconfig_file = kconfig_file

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        f = out.features
        release = host.read_line(OSRELEASE)
        version: str | None = None
        if release:
            version = release.strip()
            f.add_attributes("kernel.version", _kernel_version(version))
        else:
            out.notes.append(f"{OSRELEASE} unreadable: kernel.version unknown")

        found = kconfig_feature(host, version, self.kconfig_file)
        if found is None:
            out.notes.append("no readable kernel config (/proc/config.gz, /boot/config-<v>, ...)")
        else:
            # The parse's feature object, shared between rounds while the file is unchanged (str values
            # already): neither add_attributes' str() of each of its thousands of values nor a copy.
            f.attributes["kernel.config"] = found[1]

        modules = host.read_text(MODULES)
        builtin_path = f"/lib/modules/{version}/modules.builtin"
        builtin = builtin_modules(host, builtin_path) if version else None
        loaded, enabled = _module_flags(modules, builtin)  # made once per distinct text: shared
        if modules is None:
            out.notes.append(
                f"{MODULES} is missing (monolithic kernel without CONFIG_MODULES?): "
                "kernel.loadedmodule left out, as NFD does"
            )
        else:
            f.flags["kernel.loadedmodule"] = loaded

        if not version:
            out.notes.append("kernel version unknown: modules.builtin not read, kernel.enabledmodule left out")
        elif enabled is None:
            out.notes.append(f"{builtin_path} unreadable: kernel.enabledmodule left out, as NFD does")
        else:
            f.flags["kernel.enabledmodule"] = enabled

        # NFD selinux.go: no /sys/fs -> error (absent); no enforce file -> false; unreadable -> absent.
        enforce = host.read_bytes(SELINUX_ENFORCE)
        if not host.is_dir("/sys/fs") or (enforce is None and host.exists(SELINUX_ENFORCE)):
            out.notes.append(f"/sys/fs or {SELINUX_ENFORCE} unreadable: kernel.selinux left out, as NFD does")
        else:
            f.add_attributes("kernel.selinux", {"enabled": str(enforce is not None and enforce[:1] == b"1").lower()})
        f.add_attributes("kernel.kvm", {"enabled": str(host.exists(KVM_DEVICE)).lower()})
        return out
