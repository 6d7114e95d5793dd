"""sysctl probe: `kernel.sysctl` (not in NFD): runtime kernel settings images depend on, from /proc/sys.

NFD reads no /proc/sys setting (the image-compatibility KEP review flagged runtime config as
missing), yet workloads fail on them: Elasticsearch needs vm.max_map_count >= 262144, Redis warns
on vm.overcommit_memory, rootless and sandboxed runtimes need user namespaces, databases need
fs.file-max / net.core.somaxconn. The allow-list below is read from /proc/sys under the host root
(`vm.max_map_count` is /proc/sys/vm/max_map_count); `serve --sysctl NAME[,NAME...]` (repeatable)
adds names (the counters among them, USAGE_SYSCTLS such as fs.file-nr, are declared volatile: not
part of the node's profile). Values are the file's text with runs of whitespace made one space
("32768\t60999" -> "32768 60999"), so `Gt`/`In` work on numbers and words alike. A setting the
kernel does not have (kernel.unprivileged_userns_clone exists only on Debian/Ubuntu kernels) or
cannot be read is left out and listed in the probe status. Names are checked: dotted segments of
[A-Za-z0-9_-] (no '/', no '..'), at most MAX_EXTRA extra names; a value longer than MAX_VALUE
characters is left out.
"""

from __future__ import annotations

import re

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput

PROC_SYS = "/proc/sys"
MAX_EXTRA = 64
MAX_VALUE = 4096

# name -> why images care (shown in docs/features.md)
DEFAULT_SYSCTLS: dict[str, str] = {
    "vm.max_map_count": "Elasticsearch/OpenSearch need >= 262144",
    "vm.overcommit_memory": "Redis and JVMs expect 1 or 0",
    "vm.nr_hugepages": "persistent 2 MiB (default-size) hugepages reserved",
    "vm.swappiness": "latency-sensitive services",
    "kernel.pid_max": "many-thread workloads",
    "kernel.threads-max": "many-thread workloads",
    "kernel.shmmax": "databases using SysV shared memory",
    "kernel.unprivileged_userns_clone": "Debian/Ubuntu switch for unprivileged user namespaces",
    "kernel.apparmor_restrict_unprivileged_userns": "Ubuntu 24.04 restriction on user namespaces",
    "kernel.unprivileged_bpf_disabled": "unprivileged eBPF",
    "kernel.perf_event_paranoid": "profilers in containers",
    "kernel.yama.ptrace_scope": "debuggers and sanitizers",
    "kernel.randomize_va_space": "ASLR",
    "user.max_user_namespaces": "rootless containers, sandboxes (0 disables user namespaces)",
    "fs.file-max": "system-wide open files",
    "fs.nr_open": "per-process open-file ceiling",
    "fs.inotify.max_user_watches": "file watchers (IDEs, build tools, log shippers)",
    "fs.inotify.max_user_instances": "file watchers",
    "net.core.somaxconn": "listen backlog of servers",
    "net.ipv4.ip_local_port_range": "ephemeral ports (two numbers)",
    "net.ipv4.ip_forward": "routers, VPNs, CNI",
}
# Counters and per-read values a `serve --sysctl` may add: usage, not settings. Declared volatile (probes/base.py),
# so the node's fingerprint and the aggregator's inventory leave them out and a fleet question reading one is
# answered live (nodecompat/fleet/volatile.py).
USAGE_SYSCTLS: dict[str, str] = {
    "fs.file-nr": "open file handles now (usage)",
    "fs.inode-nr": "inodes in use now (usage)",
    "fs.inode-state": "inodes in use now (usage)",
    "fs.dentry-state": "dentry cache now (usage)",
    "fs.aio-nr": "AIO contexts in use now (usage)",
    "kernel.ns_last_pid": "last PID handed out (usage)",
    "kernel.pty.nr": "pseudo-terminals in use now (usage)",
    "kernel.random.entropy_avail": "entropy pool now (usage)",
    "kernel.random.uuid": "a new UUID on every read",
    "kernel.random.boot_id": "per boot, per node",
    "net.netfilter.nf_conntrack_count": "tracked connections now (usage)",
}
_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")


def name_problem(name: str) -> str:
    """Why `name` cannot be a sysctl name ("" when it can): dotted segments of [A-Za-z0-9_-]."""
    if len(name) > 256:
        return f"{name[:40]}...: longer than 256 characters"
    if not _NAME.match(name):
        return f"{name!r}: expected dotted segments of letters, digits, '_' or '-' (e.g. vm.max_map_count)"
    return ""


def parse_names(values: list[str] | None) -> list[str]:
    """Names from --sysctl values (comma-separated, repeatable); ValueError with a message on a bad one."""
    out: list[str] = []
    for v in values or []:
        for name in (n.strip() for n in v.split(",")):
            if not name:
                continue
            problem = name_problem(name)
            if problem:
                raise ValueError(f"--sysctl {problem}")
            if name not in out:
                out.append(name)
    if len(out) > MAX_EXTRA:
        raise ValueError(f"--sysctl: at most {MAX_EXTRA} names")
    return out


def sysctl_path(name: str) -> str:
    return PROC_SYS + "/" + name.replace(".", "/")


_PLANS: dict[tuple[str, ...], tuple[tuple[str, str | None], ...]] = {}  # extra names -> plan (bounded, below)
MAX_PLANS = 16


def _plan(extra: list[str]) -> tuple[tuple[str, str | None], ...]:
    """(name, its /proc/sys path, or None when name_problem refuses it) for the defaults then `extra` (those not
    among the defaults), in that order: each name checked once per distinct list, not every round."""
    key = tuple(extra)
    got = _PLANS.get(key)
    if got is None:
        names = list(DEFAULT_SYSCTLS) + [n for n in extra if n not in DEFAULT_SYSCTLS]
        got = tuple((n, None if name_problem(n) else sysctl_path(n)) for n in names)
        if len(_PLANS) >= MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = got
    return got


class SysctlProbe(Probe):
    name = "sysctl"
    memoizable = True  # reads only its host (probes/probe_memo.py)
    features = (
        FeatureInfo(
            "kernel.sysctl",
            frozenset({"attribute"}),
            absent="absent when /proc/sys is unreadable; a missing setting is left out",
            attributes=(
                *(AttributeInfo(n, "string", sysctl_path(n), nfd=False, description=why)
                  for n, why in DEFAULT_SYSCTLS.items()),
                *(AttributeInfo(n, "string", sysctl_path(n), nfd=False, volatile=True, description=why)
                  for n, why in USAGE_SYSCTLS.items()),
                AttributeInfo("<name>", "string", PROC_SYS + "/<name with . as />", nfd=False,
                              description="any name added with serve --sysctl"),
            ),
            nfd=False,
            source=PROC_SYS,
            description="runtime kernel settings (nodecompat addition; NFD reads none)",
        ),
    )  # fmt: skip

    def __init__(self, extra: list[str] | None = None) -> None:
        self.sysctl_extra = list(extra or [])

    def discover(self, host: HostRoot) -> ProbeOutput:
        out = ProbeOutput(Features())
        if not host.is_dir(PROC_SYS):
            out.notes.append(f"{PROC_SYS} cannot be read: kernel.sysctl left out")
            return out
        values: dict[str, str] = {}
        missing: list[str] = []
        read_text = host.read_text
        for name, path in _plan(self.sysctl_extra):
            if path is None:  # name_problem
                missing.append(name)
                continue
            text = read_text(path)
            if text is None or len(text) > MAX_VALUE:
                missing.append(name)
                continue
            values[name] = " ".join(text.split())
        out.features.add_attributes("kernel.sysctl", values)
        if missing:
            out.notes.append(f"not readable under {PROC_SYS} (absent or denied): {', '.join(missing)}")
        return out
