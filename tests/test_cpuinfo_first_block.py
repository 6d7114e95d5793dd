"""parse_cpuinfo(first_only=True), what the cpu probe parses each round: the first processor's block only
(the probes use no field of the later blocks), with every field the full parse gives, on every fixture
host's /proc/cpuinfo, the shapes of the four architectures and junk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nodecompat.probes.hostcpu import CpuInfo, parse_cpuinfo

FIXTURES = Path(__file__).parent / "fixtures" / "hosts"
ONLY_FULL = {"processors", "physical_ids"}  # counted over every block: left out by first_only
X86 = ("processor\t: {n}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t: 143\nphysical id\t: {p}\n"
       "flags\t: fpu lm avx\n")
TEXTS = [
    "".join(X86.format(n=n, p=n // 96) + "\n" for n in range(192)),  # 192 CPUs, two sockets
    "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU architecture: 8\n\nprocessor\t: 1\n"
    "Features\t: fp\nCPU implementer\t: 0x42\n",  # arm64: a later block differs, the first one counts
    "processor\t: 0\ncpu\t\t: POWER9 (architected)\n\nprocessor\t: 1\ncpu\t\t: POWER9\n\ntimebase\t: 512000000\n"
    "platform\t: pSeries\nmodel\t\t: IBM,9009-22A\n",  # ppc64le: the trailing machine block
    "vendor_id       : IBM/S390\n# processors    : 2\nbogomips per cpu: 3241.00\n\nprocessor 0: version = FF\n",
    "\n\n\nmodel name: junk first\n\nprocessor: 3\nvendor_id: AuthenticAMD\nflags: lm\n\nprocessor: 4\n",
    "", "\n\n\n", "flags: avx\n", "processor: 0\nvendor_id\n::::\n", "\x00\xff",
]


def _fields(info: CpuInfo) -> dict[str, object]:
    return {k: v for k, v in dataclasses.asdict(info).items() if k not in ONLY_FULL}


@pytest.mark.parametrize("text", [p.read_text() for p in sorted(FIXTURES.glob("*/proc/cpuinfo"))] + TEXTS)
def test_the_first_block_gives_every_field_the_full_parse_gives(text: str) -> None:
    assert _fields(parse_cpuinfo(text, first_only=True)) == _fields(parse_cpuinfo(text))


def test_first_only_stops_at_the_first_processor() -> None:
    full, first = parse_cpuinfo(TEXTS[0]), parse_cpuinfo(TEXTS[0], first_only=True)
    assert (full.processors, full.physical_ids) == (192, {"0", "1"})
    assert (first.processors, first.physical_ids) == (1, {"0"})
    assert first.flags == frozenset({"fpu", "lm", "avx"}) and first.vendor_id == "GenuineIntel"
