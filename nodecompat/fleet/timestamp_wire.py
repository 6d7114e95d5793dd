"""A probe time as the bytes of a google.protobuf.Timestamp message, written when the store records it.

ValidateFleet's per-node answers carry each node's probe time (NodeResult.as_of). A node's probe time moves
every probe round (FeatureStore.heartbeat), so an answer assembled at call time would encode every node's
as_of again on the first call after each round: ~1-2 us a node, 10,000 nodes. The store writes the
encoding once, when it records the time (NodeRecord.as_of), and the answer only copies it
(server/fleet/fleet_bytes.py). Hand-written (core does not import protobuf or grpc); the encoding is
protobuf's wire format (https://protobuf.dev/programming-guides/encoding/): field 1 `seconds` (int64) and
field 2 `nanos` (int32), each a varint, left out when 0; negative values as 64-bit two's complement (10
bytes), as upb writes int64 and int32. tests/test_fleet_bytes.py compares it with upb's encoding.
"""

from __future__ import annotations

import math

# The encoded `seconds` field per whole second (probe times of one round share their second), at most
# _MAX_SECONDS entries (~60 bytes each); cleared when full. A dict: lookups and inserts are atomic under the GIL.
_SECONDS: dict[int, bytes] = {}
_MAX_SECONDS = 4096
_SMALL = [bytes((i,)) for i in range(0x80)]


def varint(n: int) -> bytes:
    """The base-128 varint encoding of `n`; a negative n as its 64-bit two's complement (10 bytes)."""
    if 0 <= n < 0x80:
        return _SMALL[n]
    n &= 0xFFFF_FFFF_FFFF_FFFF
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def timestamp_bytes(seconds: float) -> bytes:
    """The serialized Timestamp for `seconds` (epoch seconds, float) as fleet_bytes sets it
    (seconds = int(t), nanos = int((t - seconds) * 1e9)), b"" for 0. A time that is not finite (never a
    probe time: those come from Timestamp fields) is written as 0."""
    if not math.isfinite(seconds):
        return b""
    secs = int(seconds)
    nanos = int((seconds - secs) * 1e9)
    body = _SECONDS.get(secs)
    if body is None:
        body = b"\x08" + varint(secs) if secs else b""
        if len(_SECONDS) >= _MAX_SECONDS:
            _SECONDS.clear()
        _SECONDS[secs] = body
    if nanos:
        body += b"\x10" + varint(nanos)
    return body
