"""The image compatibility spec (NFD v1alpha1): safe loading, the model, and up-front validation.

NFD decodes a spec with sigs.k8s.io/yaml into Go structs and validates nothing: unknown fields are
dropped, a bad op or regex surfaces only when that expression meets a present element, and then
the whole run aborts. We check the whole spec before evaluating and report *every* problem with
its location (strict mode). `nfd_compat=True` accepts what NFD accepts: unknown fields and lazily
detected expression problems are listed in `Spec.warnings` ("tolerated: ...") and the lazy ones
error only when evaluated, exactly as in NFD.

Loading (nodecompat.engine.spec_load) is defensive because specs come from registries: the size is
checked before parsing, nesting depth and a node budget that counts alias expansion (billion
laughs) are enforced while composing from libyaml's event stream, and scalars keep their YAML
spelling so that `value: [1.10]`, which Go's YAML layer turns into the string "1.1", can be
flagged. The builder then caps the spec's complexity (sets, rules, terms, expressions, values,
regexes; nodecompat.engine.limits) in both modes, so evaluation of any accepted spec stays cheap.

Split in modules: nodecompat.engine.spec_model (the data classes and errors), nodecompat.engine.spec_builder
(building and validation), nodecompat.engine.spec_load (safe loading); this module holds the entry points and
re-exports the public names.
"""

from __future__ import annotations

from typing import Any

from nodecompat.engine.limits import MAX_SPEC_BYTES
from nodecompat.engine.spec_builder import SpecBuilder
from nodecompat.engine.spec_load import LoadError
from nodecompat.engine.spec_load import load_document as _load
from nodecompat.engine.spec_model import (
    RULE_BACKREF_FEATURE,
    SPEC_VERSION,
    Compatibility,
    FeatureTerm,
    MatchAnyElem,
    Rule,
    Spec,
    SpecError,
    SpecTimeout,
)

__all__ = [
    "RULE_BACKREF_FEATURE",
    "SPEC_VERSION",
    "Compatibility",
    "FeatureTerm",
    "MatchAnyElem",
    "Rule",
    "Spec",
    "SpecError",
    "SpecTimeout",
    "load_document",
    "parse_spec",
    "parse_spec_partial",
]


def load_document(text: str | bytes, max_bytes: int = MAX_SPEC_BYTES, deadline: float | None = None) -> Any:
    """Parse YAML or JSON text safely into plain data (non-string scalars as `Scalar`); see spec_load."""
    try:
        return _load(text, max_bytes=max_bytes, deadline=deadline)
    except TimeoutError:
        raise SpecTimeout("the deadline passed while reading YAML") from None
    except LoadError as exc:
        raise SpecError(exc.problems) from None


def parse_spec_partial(text: str | bytes, *, max_bytes: int = MAX_SPEC_BYTES) -> tuple[Spec | None, list[str]]:
    """Strict parse that keeps what did parse: (spec or None if the text is unusable, every problem).

    For the linter, so semantic checks can run on the parts that parsed; an expression with a
    problem is kept as written. Evaluate only a spec from parse_spec.
    """
    try:
        data = load_document(text, max_bytes=max_bytes)
    except SpecError as exc:
        return None, exc.problems
    b = SpecBuilder(False)
    spec = b.spec(data)
    spec.warnings = b.warnings
    return spec, b.errors


def parse_spec(
    text: str | bytes, *, nfd_compat: bool = False, max_bytes: int = MAX_SPEC_BYTES, deadline: float | None = None
) -> Spec:
    """Parse and check a spec; raise SpecError listing every problem (each located).

    `deadline` (time.monotonic()): SpecTimeout once it passes, checked while reading YAML and per
    expression, so a caller that has given up does not keep a worker busy."""
    data = load_document(text, max_bytes=max_bytes, deadline=deadline)
    b = SpecBuilder(nfd_compat, deadline)
    spec = b.spec(data)
    if b.errors:
        raise SpecError(b.errors)
    spec.warnings = b.warnings
    spec.regex_bytes = b.regex_bytes
    return spec
