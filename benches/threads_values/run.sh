#!/usr/bin/env bash
# Threads passed as a value (no MATMUL_NUM_THREADS, no global rayon pool, matrixmultiply without its own
# threads; kernel products parallel over row blocks) against the binary that set the globals (OLD), the way
# a user meets it: the README's main command, whole process, `/usr/bin/time`, alternating, ROUNDS rounds
# (default 2), at --threads 2 and 1. Also checks that both binaries write byte-identical metrics.csv.
#   OLD=path/to/old/domsim bash benches/threads_values/run.sh [ROUNDS]
# (OLD from commit 5b74c0e: git worktree add /tmp/old 5b74c0e &&
#  (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old_target cargo build --release))
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DATA="${DOMSIM_DATASETS:-../shared/datasets}"
cargo build --release --quiet
new=target/release/domsim
old="${OLD:?set OLD to the binary that set the thread globals}"
rounds="${1:-2}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.ort/libonnxruntime.so}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() {
  local label=$1 bin=$2 threads=$3 out=$4
  rm -rf "$out"
  /usr/bin/time -f "%e %M" -o "$tmp/t" "$bin" --quiet --threads "$threads" analyze \
    --target "$DATA/chest_xray" --out "$out" >/dev/null
  read -r wall kb < "$tmp/t"
  printf "%-8s --threads %s %7.1f s %6.2f GB\n" "$label" "$threads" "$wall" "$(echo "$kb / 1048576" | bc -l)"
}
for r in $(seq 1 "$rounds"); do
  for t in 2 1; do
    run old "$old" "$t" "$tmp/old$t"
    run new "$new" "$t" "$tmp/new$t"
  done
done
for t in 2 1; do
  cmp "$tmp/old$t/metrics.csv" "$tmp/new$t/metrics.csv" && echo "metrics.csv identical (--threads $t)"
done
cmp "$tmp/new1/metrics.csv" "$tmp/new2/metrics.csv" && echo "metrics.csv identical across --threads 1 and 2"
