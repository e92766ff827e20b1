#!/usr/bin/env bash
# Null calibration on real embeddings: 200 random splits of the chest X-rays, 200 vs 200, at 3 layers.
# Writes reports/stability/results/calibration.md. Run: bash reports/stability/calibration.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DATA="${DOMSIM_DATASETS:-../shared/datasets}"
bash scripts/install-ort.sh
cargo build --release --quiet --example null_calibration
work=target/stability
[ -f "$work/emb/chest_xray/manifest.json" ] || target/release/domsim --quiet extract --images "$DATA/chest_xray" --out "$work/emb/chest_xray" --force
target/release/examples/null_calibration "$work/emb/chest_xray" "${SPLITS:-200}" 200 | tee reports/stability/results/calibration.md
