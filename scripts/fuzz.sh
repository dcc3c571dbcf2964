#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for FUZZ_SECONDS each (default 20: the smoke run `make
# test` does). The committed corpora under fuzz/corpus/ seed each run; what a smoke run finds
# goes to a scratch directory, so tests never rewrite the corpora. `make fuzz` (600 s each)
# grows and then minimises the committed corpora. A crash fails the run; its input is left in
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-20}
grow=${FUZZ_GROW_CORPUS:-0}
targets=${FUZZ_TARGETS:-route_matching filters config_yaml config_protobuf manifests}
started=$(date +%s)
cargo +nightly fuzz build --release 2>&1 | grep -E "^(error|warning)" || true
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $targets; do
    mkdir -p "corpus/$target" "$scratch/$target"
    if [ "$grow" = 1 ]; then corpora=("corpus/$target"); else corpora=("$scratch/$target" "corpus/$target"); fi
    echo "fuzz: $target for ${seconds} s"
    # -rss_limit_mb bounds memory per input: an input that makes the code allocate without bound
    # is a finding too.
    log="$scratch/$target.log"
    status=0
    cargo +nightly fuzz run --release "$target" "${corpora[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 > "$log" 2>&1 || status=$?
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|INFO: seed corpus)' "$log" || true
    if [ "$status" != 0 ]; then
        tail -60 "$log" >&2
        echo "fuzz: $target FAILED (exit $status); the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    if [ "$grow" = 1 ]; then cargo +nightly fuzz cmin --release "$target" "corpus/$target" >/dev/null 2>&1; fi
done
echo "fuzz: all targets clean in $(( $(date +%s) - started )) s"
