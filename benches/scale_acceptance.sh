#!/usr/bin/env bash
# Scale-out acceptance (heavy; not in CI): (1) Fréchet distance and covariance alignment from merged moments at
# n = 200,000 per set, d = 1,280, with peak memory; (2) `domsim compare` MMD² at n = 100,000 per set, d = 512
# (above --mmd-max-n: the linear-time statistic) on 10 null draws, wall time, peak memory and p-values.
#   bash benches/scale_acceptance.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-ort.sh >/dev/null
cargo build --release --quiet --example scale_acceptance
cargo build --release --quiet
ex=target/release/examples/scale_acceptance
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "## moments"
/usr/bin/time -f "wall %e s, peak memory %M KB" "$ex" moments
echo "## large-n MMD² on null data (100,000 per set, d = 512)"
for seed in 1 2 3 4 5 6 7 8 9 10; do
  "$ex" null-npy "$seed" "$tmp/d"
  /usr/bin/time -f "seed $seed: wall %e s, peak memory %M KB" target/release/domsim --threads 2 --quiet --seed "$seed" \
    compare --metrics mmd2_rbf --no-similarity --source "$tmp/d/a" --target "$tmp/d/b" --out "$tmp/r" --force
  python3 - "$tmp/r/metrics.csv" <<'PY'
import csv, sys
for r in csv.DictReader(open(sys.argv[1])):
    if r["metric"] == "mmd2_rbf":
        print(f"  MMD2 {float(r['value']):.3e}, p = {float(r['p_value']):.3f}, {r['note'][:60]}...")
PY
done
