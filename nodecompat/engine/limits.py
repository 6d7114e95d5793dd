"""Limits that keep hostile specs cheap: size, nesting, node and complexity budgets, reported detail.

One place for the numbers so the parser, the linter, the evaluator and the tests agree on them.

The complexity caps bound evaluation: its cost is about (match expressions) x (instances of the
feature they test), so the worst accepted spec is MAX_EXPRESSIONS expressions, all on pci.device,
each a separate term, the MAX_REGEXES of them regexes on a value unique to each device. Measured
with bench/bench_hostile.py on the 2-core dev machine (shared with other jobs) against 200 PCI
devices: parse 0.12-0.16 s, evaluate 0.15 s (In), 0.23 s (Gt erroring on every device), 0.35 s
(256 regexes), 0.18 s (256 matchName regexes). The reviewer's 1 MiB spec (6,200 rules) is refused
by the node budget in 0.37 s (it took 7-9 s to parse and 6 s to evaluate before).
Real specs are far below every cap (the upstream examples have 1-3 sets, under 10 rules, under 20
expressions).
"""

from __future__ import annotations

# Specs larger than this are refused before any parsing (callers may lower or raise it).
MAX_SPEC_BYTES = 1 << 20
# A features snapshot (`nodecompat features -o json`) of a big node is a few MiB; refuse the absurd.
MAX_SNAPSHOT_BYTES = 64 << 20
# Deepest YAML/JSON nesting accepted. A real spec nests about 8 levels; 64 leaves room and stops
# `[[[[...` or `{a:{a:...` long before Python's recursion limit.
MAX_DEPTH = 64
# YAML/JSON nodes (scalars and collections) in a document, counting every node an alias expands
# to: the billion-laughs budget. A spec at all the caps below needs far fewer.
MAX_YAML_NODES = 100_000
# Characters of scalar text in a document once its YAML aliases are expanded. Without aliases this is
# at most the text's size; aliases reuse objects (no copy) but every consumer downstream (regex
# compiles, messages, verdicts) pays per use: a 401 KB spec of aliases to one 400 KB string cost
# 15 CPU-s and 700 MiB. Four times the spec size leaves room for anchors used as intended.
MAX_EXPANDED_CHARS = 4 * MAX_SPEC_BYTES
# Characters of a value list echoed in one message (NFD's `%v` of the list, clipped past this).
MAX_ECHOED_VALUE_CHARS = 1024
# Compatibility sets in one spec (each carries one tag).
MAX_COMPATIBILITY_SETS = 256
# Rules over all sets.
MAX_RULES = 1_000
# Feature terms over all rules (matchFeatures and matchAny elements together).
MAX_TERMS = 2_000
# Match expressions (each matchExpressions entry and each matchName) over all terms.
MAX_EXPRESSIONS = 2_000
# InRegexp patterns over all expressions: each costs a compile and a search per distinct node value.
MAX_REGEXES = 256
# Values in one expression's `value` list.
MAX_VALUES_PER_EXPRESSION = 1_000
# At most this many element names are copied into an ExpressionVerdict's `actual` for matchName.
MAX_ACTUAL_NAMES = 64
# At most this many requested tags (or evaluation warnings of one term) are echoed in a message.
MAX_ECHOED = 5
# At most this many "cannot evaluate" warnings in one verdict (then a count of the rest).
MAX_EVAL_WARNINGS = 50
# RE2 memory budget (RE2::Options.max_mem) of one InRegexp value or matchName pattern: its compiled
# program and its lazily built DFA caches together stay under this. A value whose program alone does
# not fit is refused (INVALID_ARGUMENT, located) in both modes. 1 MiB holds programs of ~40,000
# instructions: `[a-z]{1000}` needs 1,004, `\pL` 1,200; `(?:\pL|\pN){1000}` needs 1.3 million and
# is refused (it is what made 7.7 KB specs cost ~79 MiB each). Go would accept some patterns this
# refuses; real specs use patterns of a few dozen instructions.
MAX_REGEX_MEM = 1 << 20
# RE2 memory of all the regexes of one spec together (the sum of their max_mem budgets: 64 KiB for a
# small lone pattern, MAX_REGEX_MEM for a big one, a union's program-size estimate for a list): bounds
# what a parsed spec keeps alive, so the daemon's parsed-spec cache can account for it by bytes. A
# spec at MAX_REGEXES small patterns uses 16 MiB of it.
MAX_SPEC_REGEX_MEM = 32 << 20
# The daemon's parsed-spec cache, in estimated bytes (text, model and every regex budget).
MAX_PARSE_CACHE_BYTES = 64 << 20
