#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 60) and prints, per
# target, the executions and the crashes found.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a nightly-capable compiler:
# the stable toolchain is used with RUSTC_BOOTSTRAP=1. The committed seed corpus
# (fuzz/corpus/<target>/) is read but never written: what the fuzzer adds goes to
# fuzz/target/work-corpus/<target>/. Crashes land in fuzz/artifacts/<target>/; copy a
# crash's input into fuzz/corpus/<target>/ once it is fixed, so that
# `cargo test -p ensync-proto --test fuzz_corpus` replays it on stable.
# Exits 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: $0 [SECONDS] [TARGET...]   (SECONDS: a whole number >= 1)" >&2
    exit 2
fi
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "error: cargo-fuzz is not installed; run: cargo install cargo-fuzz --locked" >&2
    exit 2
fi

export RUSTC_BOOTSTRAP=1
cd fuzz
all_targets=$(cargo fuzz list)
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    # shellcheck disable=SC2206 # one target name per line
    targets=($all_targets)
fi
for t in "${targets[@]}"; do
    if ! grep -qx "$t" <<<"$all_targets"; then
        echo "error: no fuzz target '$t' (targets: $(echo $all_targets))" >&2
        exit 2
    fi
done

echo "== building ${#targets[@]} fuzz targets"
cargo fuzz build >/dev/null

summary=()
failed=0
for t in "${targets[@]}"; do
    work="target/work-corpus/$t"
    mkdir -p "$work" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    log="target/fuzz-$t.log"
    echo "== fuzzing $t for ${seconds}s (log: fuzz/$log)"
    status=0
    cargo fuzz run "$t" "$work" "corpus/$t" -- -max_total_time="$seconds" -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    after=$(find "artifacts/$t" -type f | wc -l)
    crashes=$((after - before))
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="?"   # the run failed without writing an artifact (see the log)
    fi
    if [ "$status" -ne 0 ] || [ "$crashes" != 0 ]; then
        failed=1
        tail -n 30 "$log" >&2
    fi
    summary+=("$(printf '%-10s %12s execs  %3s crashes  exit %s' "$t" "${execs:-?}" "$crashes" "$status")")
done

echo
echo "== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
