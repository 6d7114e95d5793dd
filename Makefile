# Targets mirror the README. `make install` then `make run` starts the node daemon on this machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
LISTEN ?= 127.0.0.1:50051

.PHONY: install run test test-deps lint typecheck proto bench demo-registry clean

install: ## create .venv and install nodecompat with its development tools
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'

run: ## run the node daemon on this machine's /sys and /proc, on loopback
	$(BIN)/nodecompat serve --listen $(LISTEN)

test-deps: ## Debian packages the tests use: a real OCI registry, skopeo, openssl (test CAs), iproute2 (netns)
	@for c in docker-registry skopeo openssl ip; do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    docker-registry skopeo openssl iproute2 >/dev/null; \
	fi

test: test-deps lint ## lint, type-check and run the whole test suite
	$(BIN)/pytest -q

lint: ## ruff and mypy
	$(BIN)/ruff check .
	MYPY=$(CURDIR)/$(BIN)/mypy tools/typecheck.sh

proto: ## regenerate nodecompat/v1 from protos/ (a test fails when they drift)
	$(BIN)/python tools/genproto.py

demo-registry: test-deps ## a local registry on 127.0.0.1:5000 holding app:v1, for the README's --image recipes
	$(BIN)/python tools/demo_registry.py

bench: ## print performance figures
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
