# azure-ml-kong — one entry point for building, testing and running the gateway locally.
#   make demo   run Envoy + the filter + mock IdP + mock Azure ML locally, show allowed and denied calls
#   make test   install what is missing, build, lint, run unit and real-host (Envoy) tests
#   make bench  measure throughput/latency against Envoy baselines (long; not part of test)

SHELL      := /bin/bash
CARGO      ?= cargo
PYTHON     ?= python3
VENV       := .venv
ENVOY      := $(VENV)/bin/envoy
WASM       := target/wasm32-wasip1/release/azure_ml_kong.wasm
MOCKS      := target/release/mock-idp target/release/mock-aml
WASM_TARGET := wasm32-wasip1

# `make wasm` shrinks cargo's module with Binaryen's wasm-opt -Oz (about 18% smaller; same
# code, re-optimised). wasm-opt comes from the npm package `binaryen` (a Node.js build),
# installed into target/tools on first use; WASM_OPT=/path/to/wasm-opt uses another one.
# Without Node.js/npm, or if wasm-opt fails, the module is left as cargo built it.
# The features are exactly those rustc's output uses (all in Envoy's V8 and Kong's Wasmtime).
WASM_RAW    := target/$(WASM_TARGET)/release/deps/azure_ml_kong.wasm
WASM_SHRUNK := target/$(WASM_TARGET)/release/azure_ml_kong.opt.wasm
BINARYEN_VERSION := 132.0.0
BINARYEN_DIR := target/tools/binaryen-$(BINARYEN_VERSION)
WASM_OPT   ?= $(BINARYEN_DIR)/node_modules/binaryen/bin/wasm-opt
WASM_OPT_FLAGS := -Oz --mvp-features --enable-bulk-memory-opt --enable-sign-ext \
                  --enable-nontrapping-float-to-int --enable-mutable-globals

.PHONY: all setup rust-target venv wasm wasm-shrink mocks build fmt fmt-check clippy unit e2e test demo bench kong-up kong-down clean size

all: build

setup: rust-target venv

rust-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

venv: $(ENVOY)

$(ENVOY): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@$(ENVOY) --version | tail -1
	@touch $(ENVOY)

wasm: rust-target
	$(CARGO) build --release --target $(WASM_TARGET) --lib
	@$(MAKE) --no-print-directory wasm-shrink
	@ls -l $(WASM) | awk '{print "filter: $(WASM) " $$5 " bytes"}'

# cargo re-links $(WASM) from deps/ on every build, so the shrunk copy is kept beside it and
# redone only when cargo's module changes. rm first: $(WASM) is a hard link to $(WASM_RAW).
wasm-shrink:
	@if $(MAKE) --no-print-directory $(WASM_SHRUNK); then \
		rm -f $(WASM) && cp $(WASM_SHRUNK) $(WASM); \
	else \
		echo "warning: wasm-opt unavailable or failed; $(WASM) left as cargo built it" >&2; \
	fi

$(WASM_SHRUNK): $(WASM_RAW) Makefile
	@command -v $(WASM_OPT) >/dev/null || { command -v npm >/dev/null && \
		npm install --prefix $(BINARYEN_DIR) --no-audit --no-fund --loglevel=error \
			binaryen@$(BINARYEN_VERSION); }
	$(WASM_OPT) $(WASM_OPT_FLAGS) $< -o $@.tmp
	@mv $@.tmp $@

mocks:
	$(CARGO) build --release -p aml-mocks -p aml-harness

build: wasm mocks

size: wasm
	@wc -c < $(WASM)

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy: rust-target
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) --lib -- -D warnings

unit:
	$(CARGO) test --workspace --lib --bins

# Real-host tests: Envoy from .venv loads the built .wasm; mocks on free 127.0.0.1 ports.
e2e: setup build
	$(CARGO) test --workspace --tests

test: setup build fmt-check clippy
	$(CARGO) test --workspace

demo: setup build
	target/release/demo

bench: setup build
	target/release/bench

kong-up: wasm
	docker compose up -d --build

kong-down:
	docker compose down

clean:
	$(CARGO) clean
	rm -rf $(VENV)
