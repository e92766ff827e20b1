#!/usr/bin/env bash
# Seed stability of the verdict (issue: "a verdict that holds still"): animals -> all 2,682 chest X-rays with
# default settings, seeds 0-9; embeddings extracted once, then `compare --seed S` + `report` per seed.
# Writes reports/stability/results/stability.md. Run: bash reports/stability/run.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DATA="${DOMSIM_DATASETS:-../shared/datasets}"
bash scripts/install-ort.sh
cargo build --release --quiet
bin=target/release/domsim
work=target/stability
mkdir -p "$work"
for set in animals chest_xray; do
  [ -f "$work/emb/$set/manifest.json" ] || "$bin" --quiet extract --images "$DATA/$set" --out "$work/emb/$set" --force
done
for s in 0 1 2 3 4 5 6 7 8 9; do
  if [ ! -f "$work/seed$s/verdict.json" ]; then
    /usr/bin/time -f "%e" -o "$work/seed$s.time" "$bin" --quiet --seed "$s" compare --no-similarity --force \
      --source "$work/emb/animals" --target "$work/emb/chest_xray" --out "$work/seed$s"
    "$bin" --quiet report "$work/seed$s" > /dev/null
  fi
done
python3 reports/stability/summarise.py "$work" | tee reports/stability/results/stability.md
