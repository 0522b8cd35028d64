#!/usr/bin/env bash
# Runs the cargo-fuzz targets of tower-redis-cache, each for a bounded time, one after another.
#
# Usage:
#   fuzz/run.sh                                  # every target, 60 s each
#   FUZZ_SECONDS=300 fuzz/run.sh                 # every target, 5 minutes each
#   fuzz/run.sh entry_decode response_headers    # only these targets
#
# Targets (fuzz/fuzz_targets/): cache_control (the strict Cache-Control parser against an
# independent recogniser of the RFC 9111 grammar), entry_decode (stored entries), keys_and_tags
# (entry keys, tag templates, tag keys), response_headers (Cache-Control, Expires, Age, Vary,
# Cache-Groups, validators). Not part of `cargo test`: run this script by hand or from a scheduled job.
#
# Environment:
#   FUZZ_SECONDS    fuzzing time per target, in seconds (default 60). The script stops by
#                   itself: libFuzzer's -max_total_time, and a hard `timeout` behind it.
#   FUZZ_SANITIZER  cargo-fuzz --sanitizer (default `none`, see below).
#   FUZZ_KEEP_GOING set to 1 to go on after a crash (libFuzzer -fork=1 -ignore_crashes=1, and
#                   the same for timeouts and out-of-memory): for a target with a known,
#                   unfixed crash, to see its coverage and whether it finds other crashes.
#                   Every crashing input is kept; the script still exits non-zero.
#
# What it does, per target:
#   1. copies the committed seeds (fuzz/seeds/<target>/) into the working corpus
#      (fuzz/corpus/<target>/, ignored by git; it grows from run to run); for entry_decode it
#      also writes freshly encoded entries there (examples/make_seeds.rs), so a change of the
#      entry format never leaves only stale seeds;
#   2. runs `cargo fuzz run` for FUZZ_SECONDS with the target's dictionary (fuzz/dicts/);
#   3. prints the executions run, the final coverage (libFuzzer's `cov:` edges and `ft:`
#      features) and the corpus size, and whether a crash was found. Crashing inputs are in
#      fuzz/artifacts/<target>/, the full log in fuzz/logs/<target>.log.
# It exits non-zero if any target crashed (a panic, an abort, a timeout or out-of-memory).
#
# A crash: reproduce it with
#   cargo fuzz run --sanitizer none --release <target> fuzz/artifacts/<target>/crash-...
# minimise it with
#   cargo fuzz tmin --sanitizer none --release <target> fuzz/artifacts/<target>/crash-...
# and keep it under fuzz/regressions/<target>/, noted in fuzz/regressions/README.md.
#
# Toolchain: this machine has stable Rust only. cargo-fuzz's default, AddressSanitizer, needs
# `-Zsanitizer=address`, which stable rustc refuses. `--sanitizer none` leaves it out: the
# flags cargo-fuzz still passes (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*,
# --cfg fuzzing) are all stable, so the targets build on stable and
# libFuzzer is still coverage-guided (SanitizerCoverage's inline 8-bit counters and
# trace-compares). The crate forbids unsafe code, so AddressSanitizer would add little.
# To use a sanitizer anyway, FUZZ_SANITIZER=address makes this script set RUSTC_BOOTSTRAP=1,
# which lets the stable compiler accept -Z flags.
# Debug assertions and overflow checks are on through fuzz/Cargo.toml's release profile; the
# script passes --release (-O) so that the profile decides (without it cargo-fuzz adds
# -Cdebug-assertions to RUSTFLAGS for every crate, the same but with no per-crate setting).

set -euo pipefail

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_SANITIZER=${FUZZ_SANITIZER:-none}
FUZZ_KEEP_GOING=${FUZZ_KEEP_GOING:-0}
ALL_TARGETS=(cache_control entry_decode keys_and_tags response_headers)

if ! [[ $FUZZ_SECONDS =~ ^[1-9][0-9]*$ ]]; then
    echo "FUZZ_SECONDS must be a positive number of seconds, not '$FUZZ_SECONDS'" >&2
    exit 2
fi

fuzz_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$fuzz_dir")
cd "$root"

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=("${ALL_TARGETS[@]}")
fi
for target in "${targets[@]}"; do
    if [[ ! -f fuzz/fuzz_targets/$target.rs ]]; then
        echo "no fuzz target '$target' (targets: ${ALL_TARGETS[*]})" >&2
        exit 2
    fi
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi
if [[ $FUZZ_SANITIZER != none ]] && ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi
fuzz_flags=(--sanitizer "$FUZZ_SANITIZER" --release)

echo "== building the fuzz targets ($(rustc --version), $(cargo fuzz --version))"
cargo fuzz build "${fuzz_flags[@]}"

mkdir -p fuzz/logs
triple=$(rustc -vV | sed -n 's/^host: //p')
summary=()
failed=0
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    artifacts=fuzz/artifacts/$target
    log=fuzz/logs/$target.log
    mkdir -p "$corpus" "$artifacts"
    cp fuzz/seeds/"$target"/* "$corpus"/
    if [[ $target == entry_decode ]]; then
        if ! cargo run --quiet --manifest-path fuzz/Cargo.toml --example make_seeds -- "$corpus"; then
            echo "warning: could not encode fresh entry seeds; fuzzing from the committed ones" >&2
        fi
    fi
    before=$(find "$artifacts" -type f | wc -l)
    marker=$(mktemp)

    libfuzzer_args=(-max_total_time="$FUZZ_SECONDS" -print_final_stats=1 -timeout=10
        -rss_limit_mb=2048)
    if [[ $FUZZ_KEEP_GOING == 1 ]]; then
        libfuzzer_args+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    fi
    if [[ -f fuzz/dicts/$target.dict ]]; then
        libfuzzer_args+=(-dict="fuzz/dicts/$target.dict")
    fi

    echo "== fuzzing $target for ${FUZZ_SECONDS}s (corpus $corpus, log $log)"
    started=$(date +%s)
    status=0
    # libFuzzer stops itself after -max_total_time; `timeout` is the backstop (SIGINT makes
    # libFuzzer print its stats and exit), with time for a rebuild if src/ changed meanwhile.
    timeout --signal=INT --kill-after=30 $((FUZZ_SECONDS + 600)) \
        cargo fuzz run "${fuzz_flags[@]}" "$target" "$corpus" -- "${libfuzzer_args[@]}" \
        >"$log" 2>&1 || status=$?
    elapsed=$(($(date +%s) - started))

    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [[ -z $execs ]]; then # fork mode: `#<executions>: cov: ...`
        execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
    fi
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -nE 's/.* corp: ([0-9]+(\/[0-9]+[a-zA-Z]*)?).*/\1/p' <<<"$last")
    fuzzed=$(sed -nE 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$log" | tail -n 1)
    if [[ -z $fuzzed ]]; then # fork mode, or a crash: libFuzzer's clock on its last line
        fuzzed=$(sed -nE 's/.* time: ([0-9]+)s.*/\1/p' <<<"$last")
    fi
    after=$(find "$artifacts" -type f | wc -l)
    if [[ $status -eq 124 && $after -eq $before ]]; then
        result="no crash (stopped by the timeout backstop, not by -max_total_time)"
    elif [[ $status -ne 0 || $after -gt $before ]]; then
        result="CRASH (exit $status; $((after - before)) new input(s) in $artifacts)"
        failed=1
        echo "-- $target crashed; each new input in $artifacts, replayed:"
        while IFS= read -r input; do
            why=$("fuzz/target/$triple/release/$target" -timeout=10 -rss_limit_mb=2048 "$input" 2>&1 |
                grep -m 1 -A 1 -E "panicked at|ERROR: libFuzzer" | paste -s -d ' ' |
                sed -E "s/^thread '[^']*' \([0-9]+\) //" || true)
            echo "   $input: ${why:-(did not crash again when replayed)}"
        done < <(find "$artifacts" -type f -newer "$marker" | sort)
    else
        result="no crash"
    fi
    rm -f "$marker"
    line="$target: ${execs:-?} executions, ${fuzzed:+fuzzed ${fuzzed}s, }${elapsed}s wall clock,"
    line+=" cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}: $result"
    echo "-- $line"
    summary+=("$line")
done

echo "== summary (FUZZ_SECONDS=$FUZZ_SECONDS, sanitizer $FUZZ_SANITIZER)"
printf '%s\n' "${summary[@]}"
exit "$failed"
