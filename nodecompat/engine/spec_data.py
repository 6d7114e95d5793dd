"""What loaded spec data is made of: non-string scalars with their spelling, duplicate-key lists, load errors,
and Go's rendering of a scalar into a string field.

`Scalar` keeps a non-string YAML/JSON scalar's original spelling so that `value: [1.10]`, which Go's YAML layer
(sigs.k8s.io/yaml on go-yaml v2) turns into the string "1.1", can be flagged; `go_string` renders a scalar as that
layer does (a float through strconv.FormatFloat(f, 'g', -1, 32)). Shared by the YAML composer
(nodecompat.engine.spec_load) and the JSON reader (nodecompat.engine.spec_load_json); spec_load re-exports them.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

# Key under which a loaded mapping lists its duplicate keys (cannot clash with a YAML/JSON key
# a spec could use: it starts with NUL).
DUPS = "\x00duplicate keys"


class LoadError(ValueError):
    """The text is not a usable YAML/JSON document; `problems` are located messages."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Scalar:
    """A non-string YAML/JSON scalar with its original spelling (`raw`)."""

    value: Any
    raw: str


def _go_float32(f: float) -> str:
    """strconv.FormatFloat(f, 'g', -1, 32): what sigs.k8s.io/yaml makes of a YAML float in a string field."""
    if math.isnan(f):
        return ".nan"
    if math.isinf(f):
        return ".inf" if f > 0 else "-.inf"
    try:
        f32 = struct.unpack("f", struct.pack("f", f))[0]
    except OverflowError:
        return ".inf" if f > 0 else "-.inf"
    if math.isinf(f32):  # finite in float64, out of float32's range (1.0e+39)
        return ".inf" if f > 0 else "-.inf"
    digits = ""
    for p in range(1, 10):
        s = f"{f32:.{p}e}"
        if struct.unpack("f", struct.pack("f", float(s)))[0] == f32:
            digits = s
            break
    mant, exp_s = digits.split("e")
    exp = int(exp_s)
    mant = mant.rstrip("0").rstrip(".") if "." in mant else mant
    if exp < -4 or exp >= 6:
        return f"{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    neg = mant.startswith("-")
    ds = mant.lstrip("-").replace(".", "")
    if exp >= 0:
        whole = (ds + "0" * (exp + 1 - len(ds)))[: exp + 1]
        frac = ds[exp + 1 :]
        text = whole + ("." + frac if frac else "")
    else:
        text = "0." + "0" * (-exp - 1) + ds
    return ("-" if neg else "") + text


def go_string(v: Any) -> str:
    """A scalar as Go's YAML layer renders it into a string field."""
    if isinstance(v, Scalar):
        v = v.value
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float32(v)
    return str(v)
