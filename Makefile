# Targets mirror the README. `make install` then `make run` starts the node daemon on this machine;
# `make help` lists every target.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
LISTEN ?= 127.0.0.1:50051
PORT   ?= 5000

.DEFAULT_GOAL := help
.PHONY: help install run test test-deps lint typecheck proto bench fuzz demo-registry readme-check clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: LISTEN=$(LISTEN) (make run), PORT=$(PORT) (make demo-registry), PYTHON=$(PYTHON)"

install: ## create .venv and install nodecompat with its development tools
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'

# Every target that runs something from the venv depends on this check, so a newcomer who skips
# `make install` is told what to do instead of `.venv/bin/nodecompat: No such file or directory`.
venv-check:
	@test -x $(BIN)/nodecompat || { echo "make: $(BIN)/nodecompat is missing: run \`make install\` first" >&2; exit 2; }

run: venv-check ## run the node daemon on this machine's /sys and /proc (LISTEN=127.0.0.1:50051 by default; may fetch from the demo registry)
	$(BIN)/nodecompat serve --listen $(LISTEN) --allowed-registries http://127.0.0.1:$(PORT)

test-deps: ## Debian packages the tests use: a real OCI registry, skopeo, openssl (test CAs), iproute2 (netns), curl (the README's webhook recipe), etcd-server (shared registrations)
	@for c in docker-registry skopeo openssl ip curl etcd; do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    docker-registry skopeo openssl iproute2 curl etcd-server >/dev/null; \
	fi

test: test-deps lint ## lint, type-check and run the whole test suite (the README check included)
	$(BIN)/pytest -q

lint: venv-check typecheck ## ruff and mypy
	$(BIN)/ruff check .

typecheck: venv-check ## mypy over the installed package layout (tools/typecheck.sh)
	MYPY=$(CURDIR)/$(BIN)/mypy tools/typecheck.sh

proto: venv-check ## regenerate nodecompat/v1 from protos/ (a test fails when they drift)
	$(BIN)/python tools/genproto.py

demo-registry: venv-check test-deps ## a local registry holding app:v1 for the README's --image recipes (PORT=5000 by default)
	$(BIN)/python tools/demo_registry.py --port $(PORT)

readme-check: venv-check test-deps ## run the README's recipes top to bottom in a fresh shell (tools/readme_check.py)
	$(BIN)/python tools/readme_check.py

bench: venv-check ## issue 11's table: every figure beside a limit measured in the same run (~5 min)
	$(BIN)/python bench/report.py

fuzz: venv-check ## longer spec fuzzing and the 20,000-case differential run against the NFD port (~2 min)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-3000} DIFF_CASES=$${DIFF_CASES:-20000} $(BIN)/pytest -q -p no:cacheprovider \
	  tests/test_fuzz_specs.py tests/test_differential.py

clean: ## remove build and cache directories
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
