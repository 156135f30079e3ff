# QuickCMD — every entry point an operator or CI uses. `make demo` runs the product,
# `make test` runs every test; both start what they need (Docker, the sandbox image).

CARGO ?= cargo
SANDBOX_IMAGE ?= quickcmd-sandbox:latest

.PHONY: all toolchain build-agent build test test-api load demo dev-agent install deb test-install bench lint deny fuzz fmt clean

all: build

toolchain:
	@bash scripts/ensure-toolchain.sh

# The seed copies the agent from bin/quickcmd-agent.
build-agent: toolchain
	$(CARGO) build --release --locked -p quickcmd-agent
	@mkdir -p bin
	install -m 0755 target/release/quickcmd-agent bin/quickcmd-agent

build: build-agent
	$(CARGO) build --release --locked -p quickcmd
	install -m 0755 target/release/quickcmd bin/quickcmd

# Every test: unit, integration (real agent processes, real TLS, real SQLite, real Docker).
test: toolchain
	bash scripts/ensure-docker.sh
	bash scripts/build-sandbox-image.sh $(SANDBOX_IMAGE)
	$(CARGO) build --locked --workspace --bins
	$(CARGO) test --locked --workspace --no-fail-fast
	SCHEMATHESIS_MAX_EXAMPLES=$(SCHEMATHESIS_MAX_EXAMPLES) bash tests/api/schemathesis.sh

# The API against docs/openapi.yaml: schemathesis (PyPI, into target/venv-schemathesis)
# fuzzes a real agent; any 5xx, unlisted status or schema break fails. Longer runs:
# `make test-api SCHEMATHESIS_MAX_EXAMPLES=500`.
SCHEMATHESIS_MAX_EXAMPLES ?= 40
test-api: toolchain
	bash scripts/ensure-docker.sh
	bash scripts/build-sandbox-image.sh $(SANDBOX_IMAGE)
	SCHEMATHESIS_MAX_EXAMPLES=$(SCHEMATHESIS_MAX_EXAMPLES) bash tests/api/schemathesis.sh

# Load (crates/quickcmd-load): 2,000 signed jobs over 64 connections against a real agent
# (max_concurrent_jobs 8, bounded queue, real Docker), half of them beside a flood of
# unauthenticated garbage. Prints jobs/s, submit p50/p99 with and without the flood, peak
# RSS; exits 1 on any broken invariant (lost job, refusal other than 429 + Retry-After, 5xx,
# RSS over bound, audit chain). Short form: `make load LOAD_ARGS=--quick` (200 jobs);
# `LOAD_PROFILE=dev` reuses the debug build `make test` made.
LOAD_ARGS ?=
LOAD_PROFILE ?= release
LOAD_DIR = $(if $(filter dev,$(LOAD_PROFILE)),debug,$(LOAD_PROFILE))
load: toolchain
	bash scripts/ensure-docker.sh
	bash scripts/build-sandbox-image.sh $(SANDBOX_IMAGE)
	$(CARGO) build --locked --profile $(LOAD_PROFILE) -p quickcmd-agent -p quickcmd-load
	target/$(LOAD_DIR)/quickcmd-load $(LOAD_ARGS)

demo: build
	bash scripts/ensure-docker.sh
	bash scripts/build-sandbox-image.sh $(SANDBOX_IMAGE)
	bash scripts/demo.sh

dev-agent: build
	bash scripts/ensure-docker.sh
	bash scripts/build-sandbox-image.sh $(SANDBOX_IMAGE)
	bash scripts/dev-agent.sh

# The seed's Quick Install: build, then scripts/setup-agent.sh (needs root: sudo make install).
install: build-agent
	./scripts/setup-agent.sh

# Debian package in target/debian/ (cargo-deb from crates.io, installed when missing).
deb: build-agent
	@$(CARGO) deb --version >/dev/null 2>&1 || $(CARGO) install cargo-deb --locked
	$(CARGO) deb -p quickcmd-agent --no-build --output target/debian/

# The install life cycle on a real systemd in containers (root, Docker): tests/install/run.sh.
test-install: build deb
	bash scripts/ensure-docker.sh
	bash scripts/build-sandbox-image.sh $(SANDBOX_IMAGE)
	bash tests/install/run.sh

bench: build
	bash scripts/ensure-docker.sh
	bash scripts/build-sandbox-image.sh $(SANDBOX_IMAGE)
	$(CARGO) build --release --locked -p quickcmd-bench
	target/release/quickcmd-bench $(BENCH_ARGS)

lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

# Licenses, banned crates (one TLS stack: rustls), sources. Advisories need a network
# this machine lacks. cargo-deny comes from crates.io when missing.
deny: toolchain
	@$(CARGO) deny --version >/dev/null 2>&1 || $(CARGO) install cargo-deny --locked
	$(CARGO) deny check bans licenses sources

# Coverage-guided fuzzing of everything that parses untrusted bytes: the protocol crate
# (submit body, canonical JSON, read auth, audit chain) and the agent's own parsers (output
# chunker and cap, the stream's `since`, the config file). Every target asserts a property,
# not only "no panic". cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain take them. CI runs each target FUZZ_SECONDS=15 (.ci/run); `make fuzz` runs a
# minute each. A crash fails the run and leaves its input in fuzz/artifacts/<target>/:
# turn it into a regression test next to the code it broke.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := submit_body json_canonical read_auth_header audit_chain output_stream since_query config_text
fuzz: toolchain
	@if ! $(CARGO) fuzz --version >/dev/null 2>&1; then \
		echo "== cargo-fuzz missing: cargo install cargo-fuzz --locked"; \
		start=$$(date +%s); \
		$(CARGO) install cargo-fuzz --locked || { echo "cannot install cargo-fuzz from crates.io; fuzzing did not run" >&2; exit 1; }; \
		echo "== cargo-fuzz installed in $$(( $$(date +%s) - start )) s"; \
	fi
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz build
	@for target in $(FUZZ_TARGETS); do \
		echo "== fuzz $$target for $(FUZZ_SECONDS) s"; \
		mkdir -p fuzz/corpus/$$target; \
		(cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$target corpus/$$target seeds/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) \
			|| { echo "fuzz target $$target failed: see fuzz/artifacts/$$target/" >&2; exit 1; }; \
	done

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf bin .dev .demo
