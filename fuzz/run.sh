#!/usr/bin/env bash
# Runs the fuzz targets one after another, each for FUZZ_SECONDS (default 600) with one
# libFuzzer worker, then prints one summary line per target. Exits non-zero if a target
# left a new crash, timeout, leak or OOM artifact in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh                      # all three targets, 600 s each
#   FUZZ_SECONDS=60 fuzz/run.sh config_load
#
# Needs a nightly toolchain (cargo-fuzz's sanitizer flags are nightly-only); cargo-fuzz itself
# is installed from crates.io if it is missing. The corpus grows in fuzz/corpus/<target>/
# (only the seed-* files are in git); libFuzzer's logs go to fuzz/logs/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
fuzz_dir=$PWD

FUZZ_SECONDS=${FUZZ_SECONDS:-600}
TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly}
export CARGO_TERM_COLOR=never

all_targets=(query_parse canonical_roundtrip config_load)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

max_len() {
    case $1 in
        # Request targets: hyper's default URI limit is far above this, but nothing in the
        # parser depends on length past a few filters and a 256-byte cursor.
        query_parse | canonical_roundtrip) echo 1024 ;;
        # The commented example file is ~8 KB; room for it to grow a little.
        config_load) echo 12288 ;;
        *) echo "unknown target $1" >&2; exit 2 ;;
    esac
}

dict() {
    case $1 in
        config_load) echo "$fuzz_dir/dict/config.dict" ;;
        *) echo "$fuzz_dir/dict/query.dict" ;;
    esac
}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "--- installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "--- cargo +$TOOLCHAIN fuzz build -O -a (release, debug assertions and overflow checks, ASan)"
cargo "+$TOOLCHAIN" fuzz build -O -a
host=$(rustc "+$TOOLCHAIN" -vV | sed -n 's/^host: //p')
bin_dir=$fuzz_dir/target/$host/release

summary=()
failed=0
for target in "${targets[@]}"; do
    corpus=$fuzz_dir/corpus/$target
    artifacts=$fuzz_dir/artifacts/$target
    logs=$fuzz_dir/logs/$target
    mkdir -p "$corpus" "$artifacts" "$logs"
    rm -f "$logs"/fuzz-*.log
    marker=$logs/.started
    touch "$marker"
    corpus_before=$(find "$corpus" -type f | wc -l)

    echo "--- $target: ${FUZZ_SECONDS}s, max_len $(max_len "$target"), corpus $corpus_before files"
    # -jobs=1 runs the fuzzer in one child process whose output goes to fuzz-0.log in the
    # current directory, hence the cd. Standard input is closed off: nothing may wait on it.
    (
        cd "$logs"
        "$bin_dir/$target" \
            -workers=1 -jobs=1 \
            -max_total_time="$FUZZ_SECONDS" \
            -max_len="$(max_len "$target")" \
            -timeout=10 \
            -rss_limit_mb=2048 \
            -dict="$(dict "$target")" \
            -artifact_prefix="$artifacts/" \
            -print_final_stats=1 \
            "$corpus" </dev/null >"$logs/driver.log" 2>&1
    ) || true

    log=$logs/fuzz-0.log
    [ -f "$log" ] || log=$logs/driver.log
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corpus_after=$(find "$corpus" -type f | wc -l)
    crashes=$(find "$artifacts" -type f -newer "$marker" \
        \( -name 'crash-*' -o -name 'timeout-*' -o -name 'leak-*' -o -name 'oom-*' \) | wc -l)
    line="$target: runs=${runs:-?} cov=${cov:-?} ft=${ft:-?} corpus=$corpus_after (+$((corpus_after - corpus_before))) crashes=$crashes seconds=$FUZZ_SECONDS"
    summary+=("$line")
    echo "$line"
    if [ "$crashes" -gt 0 ]; then
        failed=1
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | head -5 || true
        find "$artifacts" -type f -newer "$marker" -printf '  artifact: %p\n'
    fi
done

{
    echo "--- summary ($(date -u +%Y-%m-%dT%H:%MZ), $(rustc "+$TOOLCHAIN" --version))"
    printf '%s\n' "${summary[@]}"
} | tee -a "$fuzz_dir/logs/summary.txt"
exit "$failed"
