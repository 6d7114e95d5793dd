"""What one probe round produced: the features and how each probe fared (ProbeRound, ProbeStatus).

Apart from probes/runner.py (which runs rounds and re-exports both names) so that code holding or
sending a round — the daemon's feature cache, the wire conversion, a round received from the start-up
prober (server/node/first_round.py) — does not import the runner, the registry and the host readers: the
node daemon reaches SERVING without them (issue 11 fast start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from nodecompat.features import Features


@dataclass
class ProbeStatus:
    name: str
    ok: bool
    error: str = ""
    duration_seconds: float = 0.0
    features: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timed_out: bool = False
    # True: the probe's last output, reused because every host operation it made answered the same
    # this round (probes/probe_memo.py); discover() was not called. Not sent on the wire.
    reused: bool = False


@dataclass
class ProbeRound:
    """The features of one probe round and how each probe fared."""

    features: Features
    statuses: list[ProbeStatus]
    probed_at: datetime

    def unknown_features(self) -> dict[str, str]:
        """Feature name -> why its facts are unknown, for each feature of a failed probe."""
        out: dict[str, str] = {}
        for st in self.statuses:
            if not st.ok:
                for name in st.features:
                    out[name] = f"probe {st.name} failed: {st.error}"
        return out
