"""Unknown is not absent: telling "no probe provides this name" apart from "this node lacks it".

NFD treats a feature or attribute nobody publishes as absent, so `kernel.versoin` fails quietly and a
DoesNotExist on a misspelt attribute passes quietly. The verdict keeps NFD's outcome (the booleans
are NFD's in every mode) but says why: each term and expression carries a FactStatus
(verdict.FACT_*), names that no probe provides (or that NFD does not publish, in NFD's view) are
listed once in Verdict.unseen_names, and the expression's detail says it in words with a
did-you-mean from the probes' declarations (probes/catalog.py).

A name is judged only when the node does not have it: what a node reports is a fact whatever the
declarations say (an NFD snapshot's usb.device, say). Flag features and open attribute sets
(cpu.cpuid, kernel.config, system.osrelease, local.*) never make an element name unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from nodecompat.engine.expressions import IN, NOT_IN
from nodecompat.engine.spec import RULE_BACKREF_FEATURE
from nodecompat.engine.verdict import (
    FACT_ABSENT,
    FACT_NFD_HIDDEN,
    FACT_NOT_PROVIDED,
    FACT_UNSPECIFIED,
    TermVerdict,
    UnseenName,
)

if TYPE_CHECKING:
    from nodecompat.probes.catalog import FeatureCatalog

MAX_UNSEEN = 64  # distinct unseen names listed (and given a did-you-mean) per verdict
MAX_DETAIL_NAMES = 5  # unseen names spelled out in one expression's detail


def unseen_message(feature: str, element: str, fact: str, suggestion: str) -> str:
    """`no probe provides `kernel.versoin` — did you mean `kernel.version`?` and its kin."""
    what = f"`{element}` of `{feature}`" if element else f"`{feature}`"
    if fact == FACT_NFD_HIDDEN:
        text = f"{what} is a nodecompat addition NFD does not publish: hidden in NFD's view"
    else:
        text = f"no probe provides {what}"
    if suggestion:
        text += f" — did you mean `{suggestion}`?"
    return text


class NameCheck:
    """Judges the names one evaluation meets; collects the unseen ones (at most MAX_UNSEEN)."""

    def __init__(self, catalog: FeatureCatalog | None, nfd_view: bool) -> None:
        self.catalog = catalog
        self.nfd_view = nfd_view
        self._seen: dict[tuple[str, str], UnseenName] = {}
        self._dropped: set[tuple[str, str]] = set()

    def feature_fact(self, feature: str) -> tuple[str, str]:
        """(FactStatus, suggestion) for a feature this node does not have."""
        cat = self.catalog
        if cat is None or feature == RULE_BACKREF_FEATURE:
            return FACT_ABSENT, ""
        info = cat.info(feature)
        if info is None:
            return self._note(feature, "", FACT_NOT_PROVIDED, lambda: cat.suggest(feature, nfd_only=self.nfd_view))
        if self.nfd_view and not info.nfd:
            return self._note(feature, "", FACT_NFD_HIDDEN, lambda: cat.suggest(feature, nfd_only=True))
        return FACT_ABSENT, ""

    def element_fact(self, feature: str, element: str) -> tuple[str, str]:
        """(FactStatus, suggestion) for an element the node's `feature` does not have."""
        cat = self.catalog
        info = cat.info(feature) if cat is not None and feature != RULE_BACKREF_FEATURE else None
        if cat is None or info is None:
            return FACT_ABSENT, ""
        if not info.provides(element):
            return self._note(
                feature, element, FACT_NOT_PROVIDED, lambda: cat.suggest(feature, element, nfd_only=self.nfd_view)
            )
        if self.nfd_view and not info.nfd_publishes(element):
            return self._note(feature, element, FACT_NFD_HIDDEN, lambda: cat.suggest(feature, element, nfd_only=True))
        return FACT_ABSENT, ""

    def annotate(
        self,
        tv: TermVerdict,
        feature: str,
        flags: set[str] | None,
        attrs: Mapping[str, str] | None,
        insts: Sequence[Mapping[str, str]] | None,
    ) -> None:
        """Set the FactStatus of each expression of a present feature's term whose names the node lacks."""
        if self.catalog is None or feature == RULE_BACKREF_FEATURE:
            return

        def has(el: str) -> bool:  # short-circuits: a present element is usually found at once
            return (flags is not None and el in flags) or (attrs is not None and el in attrs) or any(
                el in x for x in insts or ()
            )

        for ev in tv.expressions:
            if ev.matcher_type == "matchExpression":
                if has(ev.element):
                    continue
                ev.fact, ev.suggestion = self.element_fact(feature, ev.element)
                if ev.fact not in (FACT_ABSENT, FACT_UNSPECIFIED):
                    ev.detail = f"{ev.detail}; {unseen_message(feature, ev.element, ev.fact, ev.suggestion)}"
            elif ev.op in (IN, NOT_IN) and ev.values:
                judged = [(v, *self.element_fact(feature, v)) for v in ev.values if not has(v)]
                unseen = [j for j in judged if j[1] != FACT_ABSENT]
                if unseen:
                    said = [unseen_message(feature, v, f, s) for v, f, s in unseen[:MAX_DETAIL_NAMES]]
                    if len(unseen) > MAX_DETAIL_NAMES:
                        said.append(f"and {len(unseen) - MAX_DETAIL_NAMES} more names nobody provides")
                    ev.detail = "; ".join([ev.detail, *said])
                if unseen and len(unseen) == len(ev.values):
                    ev.fact, ev.suggestion = unseen[0][1], unseen[0][2]
                elif judged and len(judged) == len(ev.values):
                    ev.fact = FACT_ABSENT

    def _note(self, feature: str, element: str, fact: str, suggest: Callable[[], str]) -> tuple[str, str]:
        """Record an unseen name; the did-you-mean (difflib: the costly part) only for the first MAX_UNSEEN."""
        key = (feature, element)
        got = self._seen.get(key)
        if got is not None:
            return got.fact, got.suggestion
        if len(self._seen) >= MAX_UNSEEN:
            self._dropped.add(key)
            return fact, ""
        suggestion = suggest()
        message = unseen_message(feature, element, fact, suggestion)
        self._seen[key] = UnseenName(feature, element, fact, suggestion, message)
        return fact, suggestion

    @property
    def dropped(self) -> int:
        """Distinct unseen names beyond MAX_UNSEEN (not listed, no did-you-mean)."""
        return len(self._dropped)

    def unseen(self) -> list[UnseenName]:
        return list(self._seen.values())
