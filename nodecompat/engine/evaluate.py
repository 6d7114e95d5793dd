"""Evaluating a spec against one node's features: NFD's semantics, with reasons and an overall answer.

Semantics follow `nfd compat validate-node` (ExecuteGroupRule with failFast=false): every term and
every matchAny element is evaluated, a rule matches when its matchAny (if any) has a matching
element and all its matchFeatures terms match, and after each rule its `vars` are published to
the attribute feature `rule.matched` for later rules and sets. NFD's quirk is kept: vars are
published whenever matchFeatures is empty or matched, even if matchAny failed.

What NFD leaves out, we add: a set passes when all its rules match; the node is compatible when
an evaluated set passes; `score` is the largest weight of a passing set. A term on a feature whose
probe failed is *unknown*, never a silent mismatch, and rules/sets whose outcome hinges on it say
so. Evaluation errors (non-numeric node data under Gt, or a malformed expression tolerated in
NFD compatibility mode) mark that expression as not matched, with a warning, instead of aborting.

Unknown is not absent (engine/unseen.py): given the probes' catalog, a name no probe provides keeps
NFD's outcome (absent) but its term/expression says FACT_STATUS_NOT_PROVIDED, with a did-you-mean,
and the verdict lists it in `unseen_names`. With `nfd_view`, the spec is evaluated against exactly
what NFD publishes (the catalog's additions hidden), so matchName and DoesNotExist over names give
NFD's answer byte for byte; a hidden name says FACT_STATUS_NFD_HIDDEN.

How terms are reported (which instance, what the node has) is engine/report.py.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast

from nodecompat.engine.limits import MAX_ECHOED, MAX_EVAL_WARNINGS
from nodecompat.engine.matcher import ColumnCache, match_multi, match_names_multi
from nodecompat.engine.nfd_output import NfdRule, NfdSet, TermEval, nfd_error, nfd_json
from nodecompat.engine.report import echo, expr_verdict, expressions_of, report_multi, report_names
from nodecompat.engine.spec import RULE_BACKREF_FEATURE, FeatureTerm, Rule, Spec
from nodecompat.engine.unseen import NameCheck, unseen_message
from nodecompat.engine.verdict import (
    FACT_ABSENT,
    FACT_PROBE_FAILED,
    MatchAnyVerdict,
    RuleVerdict,
    SetVerdict,
    TermVerdict,
    Verdict,
)
from nodecompat.features import Features

if TYPE_CHECKING:
    from nodecompat.probes.catalog import FeatureCatalog


class EvaluationTimeout(TimeoutError):
    """evaluate() passed its deadline; the daemon answers DEADLINE_EXCEEDED."""


class _RegisteredCatalog:
    """FeatureCatalog.registered(), its module (and the probes' declarations it needs) imported at the first
    attribute asked: an evaluation that meets no unseen name and no NFD view never asks, so `nodecompat
    validate --features` does not import the catalog at all (~5-7 ms of its start, issue 11)."""

    def __getattr__(self, name: str) -> object:
        from nodecompat.probes.catalog import FeatureCatalog

        return getattr(FeatureCatalog.registered(), name)


_REGISTERED = _RegisteredCatalog()


class _View:
    """The node's facts as plain containers, plus the `rule.matched` vars published so far."""

    def __init__(self, features: Features) -> None:
        self.flags = {n: f.elements for n, f in features.flags.items()}
        self.attrs = {n: a.elements for n, a in features.attributes.items()}
        self.insts = {n: [i.attributes for i in f.elements] for n, f in features.instances.items()}

        self._own_backref = False

    def publish(self, values: Mapping[str, str]) -> None:
        if not self._own_backref:  # copy once: never change the caller's Features
            self.attrs[RULE_BACKREF_FEATURE] = dict(self.attrs.get(RULE_BACKREF_FEATURE, {}))
            self._own_backref = True
        self.attrs[RULE_BACKREF_FEATURE].update(values)


class _Run:
    def __init__(self, features: Features, unknown: Mapping[str, str], names: NameCheck) -> None:
        self.view = _View(features)
        self.names = names
        self.unknown = {k.lower(): v for k, v in unknown.items()}
        self.unknown_used: set[str] = set()
        self.warnings: list[str] = []
        self.cache = ColumnCache()
        self.eval_warnings = 0

    def eval_errors(self, path: str, errors: list[str], total: int) -> None:
        """Warn about evaluation errors: a few per term, and at most MAX_EVAL_WARNINGS in all."""
        for err in errors[:MAX_ECHOED]:
            self.warn_eval(f"{path}: cannot evaluate on this node: {err}")
        if total > MAX_ECHOED:
            self.warn_eval(f"{path}: cannot evaluate on this node: and {total - MAX_ECHOED} more errors")

    def warn_eval(self, message: str) -> None:
        self.eval_warnings += 1
        if self.eval_warnings <= MAX_EVAL_WARNINGS:
            self.warnings.append(message)

    # -- terms -----------------------------------------------------------------------------------
    def term(self, term: FeatureTerm, path: str) -> tuple[TermVerdict, TermEval]:
        name = term.feature.lower()
        v = self.view
        flags = v.flags.get(name)
        attrs = v.attrs.get(name)
        insts = v.insts.get(name)
        present = flags is not None or attrs is not None or insts is not None
        te = TermEval(term, present)
        if present:
            if term.match_expressions is not None:
                te.multi = match_multi(term.match_expressions, flags, attrs, insts, self.cache)
                self.eval_errors(f"{path}.matchExpressions", te.multi.errors, te.multi.error_count)
            if term.match_name is not None:
                te.names = match_names_multi(term.match_name, flags, attrs, insts)
                self.eval_errors(f"{path}.matchName", te.names.errors, len(te.names.errors))
        tv = TermVerdict(feature=term.feature, matched=te.matched, feature_present=present)
        if name in self.unknown:
            reason = self.unknown[name]
            self.unknown_used.add(name)
            tv.matched = False
            tv.unknown = True
            tv.fact = FACT_PROBE_FAILED
            tv.expressions = [
                expr_verdict(
                    term.feature, el, mt, e, matched=False, unknown=True, detail=f"unknown: {reason}"
                )
                for el, mt, e in expressions_of(term)
            ]
            for ev in tv.expressions:
                ev.fact = FACT_PROBE_FAILED
            return tv, te
        if not present:
            tv.fact, tv.suggestion = self.names.feature_fact(name)
            detail = f"feature {name} not present on this node"
            if tv.fact != FACT_ABSENT:
                detail = unseen_message(name, "", tv.fact, tv.suggestion) + " (NFD treats it as absent)"
            tv.expressions = [
                expr_verdict(term.feature, el, mt, e, matched=False, detail=detail)
                for el, mt, e in expressions_of(term)
            ]
            for ev in tv.expressions:
                ev.fact, ev.suggestion = tv.fact, tv.suggestion
            return tv, te
        if te.multi is not None:
            tv.expressions.extend(report_multi(term.feature, name, te.multi, insts or []))
        if te.names is not None:
            assert term.match_name is not None
            tv.expressions.append(report_names(term.feature, name, term.match_name, te.names, insts or []))
        self.names.annotate(tv, name, flags, attrs, insts)
        return tv, te

    def terms(self, terms: list[FeatureTerm], path: str) -> tuple[list[TermVerdict], list[TermEval]]:
        tvs, tes = [], []
        for i, t in enumerate(terms):
            tv, te = self.term(t, f"{path}[{i}]")
            tvs.append(tv)
            tes.append(te)
        return tvs, tes

    # -- rules -----------------------------------------------------------------------------------
    def rule(self, rule: Rule, path: str) -> tuple[RuleVerdict, NfdRule]:
        nr = NfdRule(rule.name, has_match_any=bool(rule.match_any))
        rv = RuleVerdict(name=rule.name)
        for i, el in enumerate(rule.match_any):
            tvs, tes = self.terms(el.match_features, f"{path}.matchAny[{i}].matchFeatures")
            rv.match_any.append(MatchAnyVerdict(matched=all(t.matched for t in tvs), terms=tvs))
            nr.match_any.append(tes)
        rv.match_features, nr.match_features = self.terms(rule.match_features, f"{path}.matchFeatures")

        def ok(t: TermVerdict, optimistic: bool) -> bool:
            return t.matched or (optimistic and t.unknown)

        def outcome(optimistic: bool) -> tuple[bool, bool]:
            mf = all(ok(t, optimistic) for t in rv.match_features)
            ma = not rv.match_any or any(all(ok(t, optimistic) for t in el.terms) for el in rv.match_any)
            return mf, ma

        mf, ma = outcome(False)
        rv.matched = mf and ma
        rv.unknown = not rv.matched and all(outcome(True))
        # NFD publishes vars when matchFeatures is empty or matched, even if matchAny failed.
        published = dict(rule.vars) if mf else {}
        self.view.publish(published)
        rv.vars = published
        return rv, nr


def evaluate(
    spec: Spec,
    features: Features,
    *,
    tags: Sequence[str] = (),
    unknown: Mapping[str, str] | None = None,
    deadline: float | None = None,
    catalog: FeatureCatalog | None = None,
    nfd_view: bool | None = None,
    with_nfd_json: bool = True,
) -> Verdict:
    """Evaluate `spec` against `features`; `unknown` maps feature name -> why its facts are unknown.

    `deadline` is a time.monotonic() instant checked between rules; past it, EvaluationTimeout.
    `catalog` (the probes' declarations; default: every registered probe's) lets the verdict tell
    names no probe provides from facts the node lacks; `nfd_view` evaluates against NFD's view (the
    catalog's additions hidden; default: NFD mode, `spec.nfd_compat`). Neither changes NFD's outcome for
    what is evaluated. `with_nfd_json=False` leaves `nfd_json` empty (NFD's stop error is still warned).
    """
    if nfd_view is None:
        nfd_view = spec.nfd_compat
    if catalog is None:  # the catalog (and the probes) imported only if a name is missing or NFD's view asked
        catalog = cast("FeatureCatalog", _REGISTERED)
    if nfd_view:
        features = catalog.nfd_view(features)
    run = _Run(features, unknown or {}, NameCheck(catalog, nfd_view))
    verdict = Verdict(nfd_view=nfd_view)
    nfd_sets: list[NfdSet] = []
    tag_list = list(dict.fromkeys(t for t in tags if t))
    tag_set = frozenset(tag_list)
    for idx, c in enumerate(spec.compatibilities):
        if tag_set and c.tag not in tag_set:
            continue
        sv = SetVerdict(index=idx, description=c.description, tag=c.tag, weight=c.weight)
        ns = NfdSet(c)
        for ri, rule in enumerate(c.rules):
            if deadline is not None and time.monotonic() > deadline:
                raise EvaluationTimeout(
                    f"evaluation passed its deadline at compatibilities[{idx}].rules[{ri}] "
                    f"({sum(len(s.rules) for s in verdict.sets) + ri} rules evaluated)"
                )
            rv, nr = run.rule(rule, f"compatibilities[{idx}].rules[{ri}]")
            sv.rules.append(rv)
            ns.rules.append(nr)
        sv.rules_total = len(sv.rules)
        sv.rules_matched = sum(r.matched for r in sv.rules)
        sv.passed = all(r.matched for r in sv.rules)
        sv.unknown = not sv.passed and all(r.matched or r.unknown for r in sv.rules)
        verdict.sets.append(sv)
        nfd_sets.append(ns)
    if tag_list and not verdict.sets:
        run.warnings.append(f"no compatibility set has a tag in {echo(tag_list)}; nothing was evaluated")
    passing = [s.weight for s in verdict.sets if s.passed]
    verdict.compatible = bool(passing)
    verdict.score = max(passing) if passing else 0
    if run.eval_warnings > MAX_EVAL_WARNINGS:
        run.warnings.append(f"and {run.eval_warnings - MAX_EVAL_WARNINGS} more evaluation warnings like these")
    verdict.unknown_facts = [f"{n}: {run.unknown[n]}" for n in sorted(run.unknown_used)]
    verdict.unseen_names = run.names.unseen()
    if run.names.dropped:
        run.warnings.append(f"and {run.names.dropped} more names no probe provides")
    text, err = nfd_json(nfd_sets) if with_nfd_json else ("", nfd_error(nfd_sets))
    verdict.nfd_json = text
    if err is not None:
        run.warnings.append(f"nfd compat validate-node would stop here with: {err}")
    verdict.warnings = run.warnings
    return verdict
