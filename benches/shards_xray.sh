#!/usr/bin/env bash
# Scale-out acceptance: three local `extract --shard I/3` processes over the 2,682 chest X-rays, merged, give
# byte-identical embeddings (index.csv and every layer's .npy) to one `extract`. Prints wall times.
#   bash benches/shards_xray.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
datasets="${DOMSIM_DATASETS:-$PWD/../shared/datasets}"
bash scripts/install-ort.sh >/dev/null
cargo build --release --quiet
bin=target/release/domsim
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
t0=$(date +%s.%N)
"$bin" --threads 2 --quiet extract --images "$datasets/chest_xray" --out "$tmp/single"
t1=$(date +%s.%N)
for i in 0 1 2; do
  "$bin" --threads 2 --quiet extract --images "$datasets/chest_xray" --out "$tmp/shards/s$i" --shard "$i/3" &
done
wait
t2=$(date +%s.%N)
"$bin" --quiet merge --out "$tmp/merged" "$tmp/shards"
t3=$(date +%s.%N)
n=$(($(wc -l < "$tmp/single/index.csv") - 1))
cmp "$tmp/single/index.csv" "$tmp/merged/index.csv"
for f in "$tmp"/single/layers/*.npy; do cmp "$f" "$tmp/merged/layers/$(basename "$f")"; done
echo "$n images: index.csv and $(ls "$tmp"/single/layers | wc -l) layer files byte-identical after merging 3 shards"
python3 -c "print(f'single extract {$t1-$t0:.1f} s; 3 concurrent shard processes {$t2-$t1:.1f} s; merge {$t3-$t2:.1f} s')"
