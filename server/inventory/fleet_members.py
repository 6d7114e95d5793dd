"""Fleet members: the node model, the nodes file and DNS names (the inventory's static sources).

The nodes file (YAML or JSON list of name/address/labels) is parsed here with bounded cost and located
errors; DNS names are resolved with socket.getaddrinfo (all A/AAAA records: a Kubernetes headless
Service lists one per daemon pod). Names, addresses and labels are size-checked here for both the file
and registrations, so a misbehaving client cannot grow a long-running aggregator without bound.
NodeInventory (server/inventory/fleet_nodes.py) combines these sources with registrations
(server/inventory/fleet_leases.py); the size limits and the exceptions of all three live here.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nodecompat.engine.spec_load import DUPS, LoadError, Scalar, load_document
from nodecompat.hostport import split_address

SOURCE_FILE = "file"
SOURCE_DNS = "dns"
SOURCE_REGISTERED = "registered"
SOURCE_PRIORITY = {SOURCE_FILE: 0, SOURCE_REGISTERED: 1, SOURCE_DNS: 2}

MIN_LEASE_TTL = 1.0
MAX_LEASE_TTL = 3600.0
MAX_LABELS = 64
MAX_FIELD = 253  # a node name, a DNS name
MAX_LABEL_KEY = 317  # Kubernetes: a 253-character prefix, "/", a 63-character name
MAX_LABEL_VALUE = 253
# Keys and values of one node's labels together (a registration flood within --max-registrations must
# not take the aggregator's memory or ListNodes answers with it): 10,000 registrations hold <= 40 MiB.
MAX_LABEL_BYTES = 4096
MAX_ADDRESS = MAX_FIELD + 8  # [host]:port
MAX_REGISTRATIONS = 10_000
# The nodes file is the operator's, but it is re-read by a long-running process: bound what one read
# may cost. 32 MiB / 2 million YAML values is room for ~50,000 nodes with a dozen labels each.
MAX_NODES_FILE_BYTES = 32 << 20
MAX_NODES_FILE_VALUES = 2_000_000

Resolver = Callable[[str, int], list[str]]


class NodesFileError(ValueError):
    """The nodes file cannot be used; the message names the file and the entry."""


class AddressInUse(Exception):
    """A registration claims an address another node (registered or in the nodes file) holds."""


class NotRegistrant(Exception):
    """Renewal or deregistration of a live lease by someone other than its registrant."""


class NameInUse(Exception):
    """The name belongs to a node from the nodes file or DNS: a registration cannot shadow it."""


class RegistrationsFull(Exception):
    """The inventory holds `max_registrations` live leases; a new name cannot register."""


@dataclass(frozen=True, slots=True)
class FleetNode:
    name: str
    address: str
    labels: Mapping[str, str] = field(default_factory=dict)
    source: str = SOURCE_FILE

    def matches(self, selector: Mapping[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in selector.items())


@dataclass(slots=True)
class Contact:
    """What the last call or health check to an address saw."""

    at: datetime
    health: str
    reported_name: str = ""


@dataclass(frozen=True, slots=True)
class NodeView:
    node: FleetNode
    last_contact: datetime | None
    health: str


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _printable(text: str) -> bool:
    return text.isprintable()


def system_resolver(host: str, port: int) -> list[str]:
    """All A/AAAA records of host as HOST:PORT addresses, in resolver order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[str] = []
    for family, _t, _p, _c, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        addr = format_address(str(sockaddr[0]), port)
        if addr not in out:
            out.append(addr)
    return out


def check_labels(labels: object, where: str) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise NodesFileError(f"{where}: `labels` must be a mapping of strings, got {type(labels).__name__}")
    if len(labels) > MAX_LABELS:
        raise NodesFileError(f"{where}: at most {MAX_LABELS} labels")
    out: dict[str, str] = {}
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str | int | float | bool):
            raise NodesFileError(f"{where}: label {k!r}: keys and values must be strings")
        text = str(v).lower() if isinstance(v, bool) else str(v)
        if not k or len(k) > MAX_LABEL_KEY or not _printable(k) or " " in k:
            raise NodesFileError(
                f"{where}: label key {k[:40]!r}: must be 1-{MAX_LABEL_KEY} printable characters without spaces"
            )
        if len(text) > MAX_LABEL_VALUE or not _printable(text):
            raise NodesFileError(
                f"{where}: label {k!r}: value must be at most {MAX_LABEL_VALUE} printable characters"
            )
        out[k] = text
    total = sum(len(k.encode()) + len(v.encode()) for k, v in out.items())
    if total > MAX_LABEL_BYTES:
        raise NodesFileError(
            f"{where}: labels take {total} bytes (keys and values together), over the limit of {MAX_LABEL_BYTES}"
        )
    return out


def name_problem(name: str) -> str:
    """Why `name` cannot name a node ("" when it can): it is printed in tables and logs, one per line."""
    if not name or len(name) > MAX_FIELD:
        return f"must be 1-{MAX_FIELD} characters"
    if not _printable(name) or name != name.strip():
        return "must be printable characters without leading or trailing spaces"
    return ""


def _plain(value: Any) -> Any:
    """load_document's tree as plain Python: Scalar -> its value, the duplicate-key marker dropped
    (the last key wins, as before). Depth is bounded by MAX_DEPTH, so the recursion is shallow."""
    if isinstance(value, Scalar):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != DUPS}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


_YAML_MARK_RE = re.compile(r'\s*in "<unicode string>", line (\d+), column (\d+)')
_LINE_RE = re.compile(r"^line (\d+): ")


def _load_error(exc: LoadError, origin: str) -> NodesFileError:
    """A LoadError as `origin:LINE[:COLUMN]: problem` (the position of the last YAML mark, if any)."""
    problem = "; ".join(exc.problems)
    marks = _YAML_MARK_RE.findall(problem)
    if marks:
        line, column = marks[-1]
        text = _YAML_MARK_RE.sub("", problem).replace("not valid YAML or JSON:", "not valid YAML/JSON:")
        return NodesFileError(f"{origin}:{line}:{column}: {text}")
    if m := _LINE_RE.match(problem):
        return NodesFileError(f"{origin}:{m.group(1)}: {problem[m.end() :]}")
    return NodesFileError(f"{origin}: {problem}")


def parse_nodes_file(text: str, origin: str) -> list[FleetNode]:
    """A list of {name, address, labels} (or {nodes: [...]}) from YAML/JSON text; located errors.

    Loaded with nodecompat.engine.spec_load (libyaml events composed without recursion, nesting depth and node
    count capped) rather than yaml.safe_load, whose recursive composer raises RecursionError on a few
    thousand nested `[`: any text gives a list of nodes or a NodesFileError, never another exception."""
    try:
        data = _plain(load_document(text, max_bytes=MAX_NODES_FILE_BYTES, max_nodes=MAX_NODES_FILE_VALUES))
    except LoadError as exc:
        raise _load_error(exc, origin) from None
    if data is None:
        return []
    if isinstance(data, Mapping):
        if set(data) != {"nodes"}:
            raise NodesFileError(f"{origin}: expected a list of nodes or a mapping with only `nodes`")
        data = data["nodes"] or []
    if not isinstance(data, list):
        raise NodesFileError(f"{origin}: expected a list of nodes, got {type(data).__name__}")
    nodes: list[FleetNode] = []
    seen: dict[str, int] = {}
    addresses: dict[str, int] = {}
    for i, entry in enumerate(data):
        where = f"{origin}: entry {i}"
        if not isinstance(entry, Mapping):
            raise NodesFileError(f"{where}: expected a mapping with name/address/labels")
        unknown = set(entry) - {"name", "address", "labels"}
        if unknown:
            raise NodesFileError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        address = entry.get("address")
        if not isinstance(address, str) or not address:
            raise NodesFileError(f"{where}: `address` (HOST:PORT) is required")
        try:
            split_address(address)
        except ValueError as exc:
            raise NodesFileError(f"{where}: address {exc}") from None
        name = entry.get("name", address)
        if not isinstance(name, str):
            raise NodesFileError(f"{where}: `name` must be a string")
        if problem := name_problem(name):
            raise NodesFileError(f"{where}: `name` {problem}")
        if name in seen:
            raise NodesFileError(f"{where}: name {name!r} already used by entry {seen[name]}")
        if address in addresses:  # one address is one daemon: two names for it would hide one
            j = addresses[address]
            raise NodesFileError(f"{where}: address {address} already used by entry {j} ({nodes[j].name!r})")
        seen[name] = i
        addresses[address] = i
        nodes.append(FleetNode(name, address, check_labels(entry.get("labels"), where), SOURCE_FILE))
    return nodes


def parse_dns_target(text: str) -> tuple[str, int]:
    """`--dns NAME:PORT` -> (name, port)."""
    try:
        return split_address(text)
    except ValueError as exc:
        raise ValueError(f"--dns {exc}") from None


def utc_now() -> datetime:
    """The wall-clock time of a contact (timezone-aware, UTC)."""
    return datetime.now(UTC)
