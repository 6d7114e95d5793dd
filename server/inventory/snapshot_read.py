"""Reading the inventory snapshot file (server/inventory/inventory_snapshot.py) with its work bounded.

A snapshot is untrusted input. Its byte size is bounded (--state-max-mib), but protobuf's count of entries is
not: an empty SnapshotNode takes 2 bytes on the wire and ~150 bytes once parsed, and each costs a check, so a
64 MiB file of empty entries held ~5 GB and took ~190 s of CPU before Health said SERVING (measured: 4,000,000
entries, 667 MB and 22.9 s). So the file's top level is walked first (a tag and a length per field, nothing parsed)
and only the first `max_entries` sets and nodes are kept (a snapshot written by an aggregator holds at most
--max-registrations of each plus the nodes file's and DNS's nodes: the caller's bound); what follows is not read, a
node entry over MAX_NODE_BYTES or a set entry over MAX_SET_ENTRY_BYTES is dropped unparsed. Then what is kept is
parsed at once by protobuf (upb).
Hand-written: protobuf's Python API has no parse with limits on counts; the walk is the wire format's
(https://protobuf.dev/programming-guides/encoding/), ~20 lines.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from pathlib import Path

from google.protobuf.message import DecodeError

from nodecompat.server.inventory.fleet_members import MAX_FIELD, MAX_LABEL_BYTES, MAX_LABELS
from nodecompat.server.inventory.inventory_sync import MAX_FEATURES_MESSAGE_BYTES
from nodecompat.v1 import snapshot_pb2

VERSION = 1
SETS, NODES = 3, 4  # InventorySnapshot's field numbers (protos/nodecompat/v1/snapshot.proto)
# A node entry a RegisterNode can give (labels, name, address, principal, fingerprint, identity), with room.
MAX_NODE_BYTES = 4 * (MAX_LABEL_BYTES + 8 * MAX_LABELS + 8 * MAX_FIELD)
# A feature set arrives in a FeaturesResponse of at most this; its canonical JSON form is about as big.
MAX_SET_ENTRY_BYTES = 2 * MAX_FEATURES_MESSAGE_BYTES


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def bounded(data: bytes, max_entries: int) -> tuple[bytes, Counter[str]]:
    """`data` (an InventorySnapshot's bytes) with at most `max_entries` sets and as many nodes, none over its
    entry size; (what is kept, dropped entries by reason). At most 2 * max_entries + 16 fields are looked at:
    the rest is not read (one "not read" entry). ValueError when the top level is not protobuf's wire form."""
    out: list[bytes] = []
    dropped: Counter[str] = Counter()
    kept = {SETS: 0, NODES: 0}
    pos = fields = 0
    while pos < len(data):
        fields += 1
        if fields > 2 * max_entries + 16:
            dropped[f"entries past the first {2 * max_entries + 16:,} fields (more sets or nodes than twice "
                    f"--max-registrations plus the nodes file's and DNS's nodes): not read"] += 1
            break
        start = pos
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        size = 0
        if wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            size, pos = _varint(data, pos)
            pos += size
        else:
            raise ValueError(f"wire type {wire_type} at byte {start}")
        if pos > len(data):
            raise ValueError(f"truncated field at byte {start}")
        if wire_type == 2 and number in kept:
            what = "set" if number == SETS else "node"
            limit = MAX_SET_ENTRY_BYTES if number == SETS else MAX_NODE_BYTES
            if kept[number] >= max_entries:
                dropped[f"{what} entries past the first {max_entries:,} (twice --max-registrations plus the "
                        f"nodes file's and DNS's nodes)"] += 1
                continue
            if size > limit:
                dropped[f"{what} entry over {limit:,} bytes (not parsed)"] += 1
                continue
            kept[number] += 1
        out.append(data[start:pos])
    return b"".join(out), dropped


def read_snapshot(path: Path, max_bytes: int, max_entries: int
                  ) -> tuple[snapshot_pb2.InventorySnapshot, Counter[str]] | str:
    """The parsed file at `path` (bounded: see `bounded`) and its entries dropped unparsed, or why it is not
    read ("" when there is none: a first start). A symlink or a FIFO at `path` is refused, never followed or
    waited on; the size is checked (fstat) before reading and the read stops past `max_bytes`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        if os.path.islink(path):
            return f"is a symbolic link (not followed; put the snapshot file itself at this path): {exc}"
        return f"cannot open: {exc}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size > max_bytes:
            return f"{st.st_size:,} bytes, over --state-max-mib ({max_bytes:,} bytes)"
        chunks, left = [], max_bytes + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        return f"cannot read: {exc}"
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        return f"over --state-max-mib ({max_bytes:,} bytes) when read"
    snap = snapshot_pb2.InventorySnapshot()
    try:
        kept, dropped = bounded(data, max_entries)
        snap.ParseFromString(kept)
    except (DecodeError, ValueError, RuntimeError) as exc:
        return f"not a snapshot (cannot parse: {exc or 'malformed'})"
    if snap.version != VERSION:
        return f"snapshot version {snap.version}, this aggregator reads version {VERSION}"
    return snap, dropped


__all__ = ["MAX_NODE_BYTES", "MAX_SET_ENTRY_BYTES", "VERSION", "bounded", "read_snapshot"]
