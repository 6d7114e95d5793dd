"""The daemon's feature cache: concurrent refreshes share one probe round; a failed round is not
passed off as fresh data."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.runner import ProbeRound, ProbeRunner
from nodecompat.server.node.feature_cache import FeatureCache


class CountingProbe(Probe):
    name = "counting"
    features = (FeatureInfo("counting.calls", frozenset({"attribute"})),)

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def discover(self, host: HostRoot) -> ProbeOutput:
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(0.3)
        out = ProbeOutput()
        out.features.add_attributes("counting.calls", {"n": str(n)})
        return out


def test_concurrent_refreshes_share_one_round(tmp_path: Path) -> None:
    probe = CountingProbe()
    cache = FeatureCache(ProbeRunner([probe], HostRoot(tmp_path)))
    results: list[ProbeRound] = []
    threads = [threading.Thread(target=lambda: results.append(cache.refresh())) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Whoever started first ran a round; everyone who arrived while it ran got that same round.
    assert probe.calls <= 2 and len(results) == 6
    assert len({id(r) for r in results}) == probe.calls


class FailingRunner(ProbeRunner):
    def __init__(self, host: HostRoot) -> None:
        super().__init__([CountingProbe()], host)
        self.fail = False

    def run(self) -> ProbeRound:
        rnd = super().run()
        if self.fail:
            raise RuntimeError("round broke")
        return rnd


def test_a_failed_round_is_an_error_for_those_who_joined_it(tmp_path: Path) -> None:
    runner = FailingRunner(HostRoot(tmp_path))
    cache = FeatureCache(runner)
    first = cache.refresh()
    runner.fail = True
    errors: list[str] = []

    def call() -> None:
        try:
            cache.refresh()
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 3 and all("round broke" in e for e in errors)
    assert cache.current() is first  # the cache still holds the last good round for plain reads
    with pytest.raises(RuntimeError):
        cache.refresh()
