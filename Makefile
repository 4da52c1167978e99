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

.PHONY: all setup rust-target venv wasm mocks build fmt fmt-check clippy unit e2e test demo bench kong-up kong-down clean size

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
	@ls -l $(WASM) | awk '{print "filter: $(WASM) " $$5 " bytes"}'

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
