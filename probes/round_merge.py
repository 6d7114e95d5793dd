"""Merging the probes' outputs into a round's features (probes/runner.py), and reusing that merge.

_take moves a built-in probe's declared features into the round's Features (its objects, not copies;
_detach copies one before something is merged into it). A long-lived runner whose round reused every
probe's last output (probe_memo: nothing changed on the host) builds the same features as the last
round from the same objects: `copied` gives the last round's Features with its three dicts copied
(the feature objects shared, as _take shares them), so the merge is not done again; `again` gives that
whole round (its statuses too) without the runner's merge loop.
Hand-written: a few dict moves with the sharing rules of the probe memo.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from nodecompat.features import Features
from nodecompat.probes.probe_round import ProbeRound, ProbeStatus


def copied(last: Features) -> Features:
    """A new Features holding `last`'s feature objects (its flags/attributes/instances dicts copied, so
    a consumer adding or removing a feature in one round does not change another round's)."""
    return Features(flags=dict(last.flags), attributes=dict(last.attributes), instances=dict(last.instances))


_KINDS = ("flags", "attributes", "instances")  # Features' three dicts, in merge order


def _take(into: Features, out: Features, keep: frozenset[str] | set[str], taken: set[str]) -> list[str]:
    """Move the declared features (`keep`) of a finished probe's output into the round's features; the
    names of the output's features not declared (each once per kind they occur in: the caller reports them).

    For built-in probes only: their output is not changed by anyone after this (it may be kept by the memo
    and reused next round: probes/probe_memo.py), so a feature no earlier probe delivered is moved as-is
    instead of copied element by element (kernel.config has thousands); a feature two probes both deliver
    is merged (Features.merge: later values win) into a copy of what the round holds (_detach), never into
    the earlier probe's own object."""
    undeclared: list[str] = []
    for kind in _KINDS:
        src: dict[str, Any] = getattr(out, kind)
        if src:
            dst: dict[str, Any] = getattr(into, kind)
            for name, feat in src.items():
                if name in keep and name not in taken and name not in dst:  # the usual case: moved as-is
                    dst[name] = feat
                    taken.add(name)
                else:
                    _take_one(into, kind, name, feat, keep, taken, undeclared)
    return undeclared


def _take_one(into: Features, kind: str, name: str, feat: Any, keep: frozenset[str] | set[str], taken: set[str],
              undeclared: list[str]) -> None:  # fmt: skip
    """_take's other cases for feature `name` of `kind` ("flags", "attributes", "instances"): not declared
    (noted in `undeclared`), or delivered already (merged into a copy of what the round holds)."""
    if name not in keep:
        undeclared.append(name)
        return
    if name in getattr(into, kind):
        _detach(into, kind, name)
    into.merge(Features(**{kind: {name: feat}}))
    taken.add(name)


def _detach(into: Features, kind: str, name: str) -> None:
    """Replace `into`'s feature `name` of `kind` ("flags", "attributes", "instances") by a copy, before
    something is merged into it: the object may be a probe's output that the memo keeps and reuses."""
    dst = getattr(into, kind)
    dst[name] = getattr(Features(**{kind: {name: dst[name]}}).copy(), kind)[name]


def again(calls: list[Any], declared: list[list[str]], last: Features, notes: dict[str, list[str]],
          statuses: dict[str, ProbeStatus], load_errors: Iterable[Any]) -> ProbeRound:  # fmt: skip
    """The runner's round (probes/runner.py) when every call finished and reused the output the last
    round's features `last` were built from: those features (dicts copied) and each probe's status (ok,
    reused, its last notes copied, its declared features), without the merge and the output checks.
    `calls`: the runner's _Call objects; `declared`: each call's probe's feature names (copied into its
    status); `statuses`: those already decided (probes still hung), to which these and the load errors are
    added. The runner's `last` and `notes` are never handed out, so a
    consumer changing this round's features or notes does not change the next round's."""
    for call, names in zip(calls, declared, strict=True):
        name = call.probe.name
        took = call.finished - call.started
        statuses[name] = ProbeStatus(name, True, "", took, list(names), list(notes[name]), False, True)
    for le in load_errors:
        statuses[le.name] = ProbeStatus(le.name, ok=False, error=le.error)
    ordered = [statuses[k] for k in sorted(statuses)]
    return ProbeRound(features=copied(last), statuses=ordered, probed_at=datetime.now(UTC))
