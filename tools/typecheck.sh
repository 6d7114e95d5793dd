#!/usr/bin/env bash
# mypy over the installed layout: probes/, server/ and clients/ are nodecompat.probes/.server/.clients,
# a mapping only the packaging knows, so we give mypy a symlink tree shaped like the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck
rm -rf "$tree" && mkdir -p "$tree/nodecompat"
for f in nodecompat/*; do ln -s "$PWD/$f" "$tree/nodecompat/$(basename "$f")"; done
ln -s "$PWD/probes" "$tree/nodecompat/probes"
ln -s "$PWD/server" "$tree/nodecompat/server"
ln -s "$PWD/clients" "$tree/nodecompat/clients"
cd "$tree" && exec "${MYPY:-../../.venv/bin/mypy}" --config-file ../../pyproject.toml -p nodecompat "$@"
