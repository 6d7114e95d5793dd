"""The match-expression vocabulary: NFD's MatchOp names and the op groups the engine reasons with.

Op names follow NFD's pkg/apis/nfd/nodefeaturerule (MatchAny, MatchIn, ... MatchIsFalse in the v1alpha1
types; the value-count rules of expression.go): which ops take no values, a list, one or two values, which
compare numbers (or versions, `type: version`). Re-exported by nodecompat.engine.expressions.
"""

from __future__ import annotations

ANY = ""
IN = "In"
NOT_IN = "NotIn"
IN_REGEXP = "InRegexp"
EXISTS = "Exists"
DOES_NOT_EXIST = "DoesNotExist"
GT = "Gt"
GE = "Ge"
LT = "Lt"
LE = "Le"
GT_LT = "GtLt"
GE_LE = "GeLe"
IS_TRUE = "IsTrue"
IS_FALSE = "IsFalse"

OPS: tuple[str, ...] = (
    ANY,
    IN,
    NOT_IN,
    IN_REGEXP,
    EXISTS,
    DOES_NOT_EXIST,
    GT,
    GE,
    LT,
    LE,
    GT_LT,
    GE_LE,
    IS_TRUE,
    IS_FALSE,
)
NO_VALUE_OPS = frozenset({ANY, EXISTS, DOES_NOT_EXIST, IS_TRUE, IS_FALSE})
LIST_OPS = frozenset({IN, NOT_IN, IN_REGEXP})
ONE_VALUE_OPS = frozenset({GT, GE, LT, LE})
TWO_VALUE_OPS = frozenset({GT_LT, GE_LE})
NUMERIC_OPS = ONE_VALUE_OPS | TWO_VALUE_OPS
# Ops that can only ever be true on an element that has a value (never on a flag).
VALUE_OPS = LIST_OPS | NUMERIC_OPS | {IS_TRUE, IS_FALSE}

TYPE_VERSION = "version"
TYPES = ("", TYPE_VERSION)
