#!/usr/bin/env bash
# Fuzzes each target in fuzz/ for a bounded time (libFuzzer through cargo-fuzz, on the stable
# toolchain: --sanitizer none; Rust's own checks and debug assertions still catch what a
# sanitizer would in safe code). Starts from the seeds (dataplane::fuzzing::seeds) in a
# scratch corpus; a crash is copied to fuzz/regressions/<target>/, where
# dataplane/tests/fuzz_regressions.rs replays it on every run, and fails this script.
#
#   scripts/fuzz.sh [SECONDS per target, default 20] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(pipeline dns gossip control state)
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (cargo install, about a minute) ..." >&2
  cargo install cargo-fuzz --locked --quiet
fi
work=$(mktemp -d /tmp/meshd-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
cargo run --release --quiet -p dataplane --features testkit --example fuzz_seeds -- "$work/seeds"
echo "fuzz: building the targets (cargo fuzz build) ..." >&2
(cd fuzz && cargo fuzz build --sanitizer none >/dev/null)
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  echo "fuzz: $t for ${secs}s ..." >&2
  if (cd fuzz && cargo fuzz run --sanitizer none "$t" "$work/corpus/$t" "$work/seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$work/artifacts/$t/" \
        >"$work/$t.log" 2>&1); then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
    cov=$(grep -o 'cov: [0-9]*' "$work/$t.log" | tail -1)
    echo "fuzz: $t: ${runs:-?} runs, ${cov#cov: } edges, corpus $(ls "$work/corpus/$t" | wc -l) inputs, no crash" >&2
  else
    # The panic's message and place first (the backtrace under it can be longer than the tail).
    grep -m1 -A2 "panicked at" "$work/$t.log" >&2 || true
    tail -30 "$work/$t.log" >&2
    for a in "$work/artifacts/$t"/*; do
      [ -e "$a" ] || continue
      cp "$a" "fuzz/regressions/$t/"
      echo "fuzz: $t: crash kept as fuzz/regressions/$t/$(basename "$a"): rename it after what it caught, fix, commit" >&2
    done
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}" >&2
  exit 1
fi
