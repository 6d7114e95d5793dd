"""The rule engine: NFD's image compatibility spec (v1alpha1) loaded safely, its match expressions, terms
and rules evaluated with NFD's semantics, verdicts, lint, and NFD's exact JSON output.

Modules: `spec_load` (bounded YAML/JSON loading), `spec` (the model and validation), `limits` (the caps),
`expressions` and `matcher` (NFD's expression.go and rule.go), `evaluate` (a spec against one node's
features), `verdict` (what an evaluation found), `lint`, and `nfd_output` (`nfd compat validate-node
--output-json` byte for byte). The engine never imports grpc.
"""
