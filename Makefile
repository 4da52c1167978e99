# azure-ml-kong — one entry point for building, testing and running the gateway locally.
#   make demo   run Envoy + the filter + mock IdP + mock Azure ML locally, show allowed and denied calls
#   make test   install what is missing, build, lint, run unit and real-host tests (Envoy, and
#               Kong 3.9 when it is installed: /opt/kong/bin/kong or $AMLK_KONG)
#   make test-envoy / make test-kong   only the real-host tests of one host
#   make bench  requests/s and latency of the filter in Envoy and Kong next to no filter, a
#               minimal Wasm filter and the host's native JWT check (long; docs/BENCH.md;
#               `make test` runs only its smoke mode)
#   make fuzz   coverage-guided fuzzing of the core, FUZZ_SECONDS (default 60) per target
#   make soak   mixed traffic through two workers on each host for SOAK_SECONDS (default 60)
#               while the IdP rotates keys twice and fails once (`make test` runs 10 s)

SHELL      := /bin/bash
CARGO      ?= cargo
PYTHON     ?= python3
VENV       := .venv
ENVOY      := $(VENV)/bin/envoy
WASM       := target/wasm32-wasip1/release/azure_ml_kong.wasm
# The bench's floor: bench/minimal-filter (reads the request headers, sets one header).
MINIMAL_WASM := target/wasm32-wasip1/release/minimal_filter.wasm
WASM_TARGET := wasm32-wasip1
# Kong Gateway 3.9 built from source (docs/kong.md); the harness reads the same variable.
AMLK_KONG  ?= /opt/kong/bin/kong
ifeq ($(strip $(AMLK_KONG)),)
override AMLK_KONG := /opt/kong/bin/kong
endif
export AMLK_KONG
KONG_MISSING_NOTE := NOTE: Kong tests did not run: $(AMLK_KONG) not found (build Kong 3.9 from source as docs/kong.md says, or set AMLK_KONG)
# Real-host tests start a gateway each (Kong: a few seconds of start-up and two nginx workers)
# and then mostly wait on timers: on 2 cores, three at a time used 1.25 cores and ran the
# end-to-end binary in 424 s (1,264 s of tests). E2E_THREADS=N overrides.
E2E_THREADS ?= 3

# `make wasm` builds the filter with the standard library recompiled for size and with
# panics as an immediate trap (std's panic message formatting, ~100 KB of the module, is not
# linked; a panic would trap the VM either way, as panic = "abort" does, and the host logs the
# trap). Both are unstable cargo/rustc options, used here on the stable toolchain through
# RUSTC_BOOTSTRAP; they need the rust-src component, which `rust-target` adds.
# WASM_STD=stable builds with the prebuilt standard library instead (panic messages logged);
# so does a machine where rust-src cannot be added. Its own target dir: the flags differ.
WASM_STD    ?= size
WASM_DIR    := target/wasm-std-$(WASM_STD)
# Then Binaryen's wasm-opt -Oz (about 18% smaller; same code, re-optimised). wasm-opt comes
# from the npm package `binaryen` (a Node.js build), installed into target/tools on first
# use; WASM_OPT=/path/to/wasm-opt uses another one. Without Node.js/npm, or if wasm-opt
# fails, the module is left as cargo built it.
# The features are exactly those rustc's output uses (all in Envoy's V8 and Kong's Wasmtime).
WASM_RAW    := $(WASM_DIR)/$(WASM_TARGET)/release/deps/azure_ml_kong.wasm
WASM_SHRUNK := $(WASM_DIR)/azure_ml_kong.opt.wasm
BINARYEN_VERSION := 132.0.0
BINARYEN_DIR := target/tools/binaryen-$(BINARYEN_VERSION)
WASM_OPT   ?= $(BINARYEN_DIR)/node_modules/binaryen/bin/wasm-opt
WASM_OPT_FLAGS := -Oz --mvp-features --enable-bulk-memory-opt --enable-sign-ext \
                  --enable-nontrapping-float-to-int --enable-mutable-globals

FUZZ_SECONDS ?= 60
SOAK_SECONDS ?= 60
FUZZ_TARGETS ?= token jwks discovery config policy path headers decide

.PHONY: fuzz soak all setup rust-target venv wrk wasm wasm-shrink minimal-wasm mocks mocks-release build fmt fmt-check clippy unit e2e test test-envoy test-kong demo bench kong-up kong-down clean size

all: build

setup: rust-target venv wrk

# The bench's load generator (its smoke mode runs in `make test`); Debian's package.
wrk:
	@command -v wrk >/dev/null || apt-get install -y wrk

rust-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@[ "$(WASM_STD)" = stable ] || rustup component list --installed 2>/dev/null | grep -q '^rust-src' || \
		rustup component add rust-src || echo "warning: rust-src unavailable; make wasm builds with WASM_STD=stable" >&2

venv: $(ENVOY)

$(ENVOY): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@$(ENVOY) --version | tail -1
	@touch $(ENVOY)

wasm: rust-target
	@if [ "$(WASM_STD)" != stable ] && ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then \
		$(MAKE) --no-print-directory wasm WASM_STD=stable; \
	elif [ "$(WASM_STD)" = stable ]; then \
		CARGO_TARGET_DIR=$(WASM_DIR) $(CARGO) build --release --target $(WASM_TARGET) --lib && \
		$(MAKE) --no-print-directory wasm-shrink WASM_STD=stable; \
	else \
		RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort" CARGO_TARGET_DIR=$(WASM_DIR) \
			$(CARGO) build --release --target $(WASM_TARGET) --lib -Zbuild-std=std,panic_abort && \
		$(MAKE) --no-print-directory wasm-shrink; \
	fi
	@ls -l $(WASM) | awk '{print "filter: $(WASM) " $$5 " bytes"}'

# The shrunk copy is redone only when cargo's module changes; $(WASM) is always a copy (rm
# first: it may be a hard link cargo made when building the filter in target/).
wasm-shrink:
	@mkdir -p $(dir $(WASM))
	@if $(MAKE) --no-print-directory $(WASM_SHRUNK); then \
		rm -f $(WASM) && cp $(WASM_SHRUNK) $(WASM); \
	else \
		echo "warning: wasm-opt unavailable or failed; $(WASM) is the module as cargo built it" >&2; \
		rm -f $(WASM) && cp $(WASM_RAW) $(WASM); \
	fi

$(WASM_SHRUNK): $(WASM_RAW) Makefile
	@command -v $(WASM_OPT) >/dev/null || { command -v npm >/dev/null && \
		npm install --prefix $(BINARYEN_DIR) --no-audit --no-fund --loglevel=error \
			binaryen@$(BINARYEN_VERSION); }
	$(WASM_OPT) $(WASM_OPT_FLAGS) $< -o $@.tmp
	@mv $@.tmp $@

minimal-wasm: rust-target
	$(CARGO) build --release --target $(WASM_TARGET) -p minimal-filter
	@ls -l $(MINIMAL_WASM) | awk '{print "minimal filter: $(MINIMAL_WASM) " $$5 " bytes"}'

# Debug builds for the tests' harness (the same profile `cargo test` builds, so nothing is
# compiled twice); release builds for the demo and the bench.
mocks:
	$(CARGO) build -p aml-mocks -p aml-harness

mocks-release:
	$(CARGO) build --release -p aml-mocks -p aml-harness

build: wasm minimal-wasm mocks

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

# Real-host tests: Envoy from .venv and Kong ($(AMLK_KONG)) load the built .wasm; mocks on
# free 127.0.0.1 ports. Every e2e test has an `<name>_envoy` and a `<name>_kong` twin (the
# harness's both_hosts!). Kong tests run when Kong is installed; otherwise one NOTE line says
# so and they are skipped by exact name (a substring filter would also catch offline tests such
# as meta_json_has_the_shape_kong_accepts). A Kong test itself never skips: without Kong it
# fails, naming the path.
# $(call host_tests,HOST,PREFIX): "PREFIX <name>_HOST" for every such test, for libtest --exact.
host_tests = $$($(CARGO) test --workspace --tests -- --list 2>/dev/null \
	| sed -n 's/^\(.*_$(1)\): test$$/\1/p' | sort -u | sed 's/^/$(2) /' | tr '\n' ' ')

e2e: setup build
	@if [ -x "$(AMLK_KONG)" ]; then \
		$(CARGO) test --workspace --tests --no-fail-fast -- --test-threads=$(E2E_THREADS); \
	else \
		echo "$(KONG_MISSING_NOTE)"; \
		$(CARGO) test --workspace --tests --no-fail-fast -- --test-threads=$(E2E_THREADS) \
			--exact $(call host_tests,kong,--skip); \
	fi

test: setup build fmt-check clippy
	@if [ -x "$(AMLK_KONG)" ]; then \
		$(CARGO) test --workspace --no-fail-fast -- --test-threads=$(E2E_THREADS); \
	else \
		echo "$(KONG_MISSING_NOTE)"; \
		$(CARGO) test --workspace --no-fail-fast -- --test-threads=$(E2E_THREADS) \
			--exact $(call host_tests,kong,--skip); \
	fi

# Only one host's real-host tests.
test-envoy: setup build
	$(CARGO) test --workspace --tests --no-fail-fast -- --test-threads=$(E2E_THREADS) \
		--exact $(call host_tests,envoy,)

test-kong: build
	@[ -x "$(AMLK_KONG)" ] || { echo "$(KONG_MISSING_NOTE)" >&2; exit 1; }
	$(CARGO) test --workspace --tests --no-fail-fast -- --test-threads=$(E2E_THREADS) \
		--exact $(call host_tests,kong,)

# tests/e2e_soak.rs at SOAK_SECONDS per host; it prints a `SOAK <host>: ...` line of counts.
soak: setup build
	@if [ -x "$(AMLK_KONG)" ]; then \
		SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) test --test e2e_soak -- --nocapture --test-threads=1; \
	else \
		echo "$(KONG_MISSING_NOTE)"; \
		SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) test --test e2e_soak -- --nocapture --test-threads=1 \
			--skip _kong; \
	fi

# DEMO_HOST=kong make demo: the tour through Kong 3.9 instead of Envoy.
demo: setup wasm mocks-release
	target/release/demo

# BENCH_ROUNDS, BENCH_SECONDS, BENCH_HOSTS, BENCH_VARIANTS, BENCH_FILTER_WASM, ...: docs/BENCH.md.
bench: setup wasm minimal-wasm mocks-release
	target/release/bench

kong-up: wasm
	docker compose up -d --build

kong-down:
	docker compose down

# libFuzzer through cargo-fuzz on the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass
# its -Z flags (sanitizer, coverage); no nightly is needed. Each target runs FUZZ_SECONDS from
# its committed seeds (fuzz/corpus/<target>, read-only here) plus what earlier runs found
# (target/fuzz-corpus/<target>); a crash stops make with the input in fuzz/artifacts/<target>.
# Fix it, copy the input to fuzz/regressions/<target>/ (replayed by tests/fuzz_corpus.rs).
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz
	@set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p target/fuzz-corpus/$$t; \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		( cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t ../target/fuzz-corpus/$$t corpus/$$t \
			-- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 ) \
			|| { echo "fuzz: $$t FAILED (input in fuzz/artifacts/$$t)"; exit 1; }; \
	done

clean:
	$(CARGO) clean
	rm -rf $(VENV)
