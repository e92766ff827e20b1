#!/usr/bin/env bash
# Cost of the controls (colour, resolution, pretraining) on the README's main command, the way a user meets
# it: whole process, fresh output folder, extraction included, `/usr/bin/time`, the binary before the
# controls (OLD) and this one (NEW), alternating, ROUNDS rounds (default 2), and NEW --no-controls.
#   OLD=path/to/old/domsim bash benches/controls_cost/run.sh [ROUNDS]
# (build OLD from commit 3e4bd2b, the last one without controls: git worktree add /tmp/old 3e4bd2b &&
#  (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old_target cargo build --release))
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DATA="${DOMSIM_DATASETS:-../shared/datasets}"
cargo build --release --quiet
new=target/release/domsim
old="${OLD:?set OLD to the binary before the controls}"
rounds="${1:-2}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.ort/libonnxruntime.so}"  # the same runtime for both binaries
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() {
  local label=$1; shift
  rm -rf "$tmp/out"
  /usr/bin/time -f "%e %M" -o "$tmp/t" "$@" --quiet analyze --target "$DATA/chest_xray" --out "$tmp/out" >/dev/null
  # (analyze's flags after the subcommand: the binary's global --quiet goes first)
  read -r wall kb < "$tmp/t"
  printf "%-22s %7.1f s %6.2f GB\n" "$label" "$wall" "$(echo "$kb / 1048576" | bc -l)"
}
for r in $(seq 1 "$rounds"); do
  run "old (no controls)" "$old"
  run "new (controls on)" "$new"
done
for r in $(seq 1 "$rounds"); do
  rm -rf "$tmp/out"
  /usr/bin/time -f "%e %M" -o "$tmp/t" "$new" --quiet analyze --no-controls --target "$DATA/chest_xray" --out "$tmp/out" >/dev/null
  read -r wall kb < "$tmp/t"
  printf "%-22s %7.1f s %6.2f GB\n" "new --no-controls" "$wall" "$(echo "$kb / 1048576" | bc -l)"
done
