#!/usr/bin/env bash
# Regenerates the committed case studies under reports/case_studies/ with the bundled default model (EfficientNet-Lite0)
# on the shared datasets (../shared/datasets, or $DOMSIM_DATASETS). Embeddings are cached under
# target/case_studies/ and not committed; only CSV, JSON, PNG and HTML files are copied here.
#   1. animals vs chest X-rays (NORMAL / PNEUMONIA labels on the target)
#   2. animals vs animals: two interleaved halves (even / odd files), the control
#   3. chest X-rays vs PneumoniaMNIST (28 px, upscaled by domsim to 224)
# Needs Python with numpy for case 3 (scripts/pyenv.sh makes .venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA="${DOMSIM_DATASETS:-../shared/datasets}"
bash scripts/install-ort.sh
cargo build --release --quiet
bin=target/release/domsim
work=target/case_studies
mkdir -p "$work"

# the control: even and odd files of the animal set
rm -rf "$work/halves" && mkdir -p "$work/halves/even" "$work/halves/odd"
i=0
for f in $(ls "$DATA/animals" | LC_ALL=C sort); do
  if [ $((i % 2)) -eq 0 ]; then ln -s "$(realpath "$DATA/animals/$f")" "$work/halves/even/$f";
  else ln -s "$(realpath "$DATA/animals/$f")" "$work/halves/odd/$f"; fi
  i=$((i + 1))
done

# PneumoniaMNIST as PNG files in class folders (all splits)
if [ ! -d "$work/pneumoniamnist" ]; then
  bash scripts/pyenv.sh
  .venv/bin/python - "$DATA/pneumoniamnist.npz" "$work/pneumoniamnist" <<'PY'
import os, sys
import numpy as np
from PIL import Image
d = np.load(sys.argv[1])
out = sys.argv[2]
for split in ["train", "val", "test"]:
    for i, (img, lab) in enumerate(zip(d[f"{split}_images"], d[f"{split}_labels"].ravel())):
        cls = "PNEUMONIA" if lab == 1 else "NORMAL"
        os.makedirs(os.path.join(out, cls), exist_ok=True)
        Image.fromarray(img).save(os.path.join(out, cls, f"{split}_{i:05d}.png"))
PY
fi

run() {
  name=$1; src=$2; tgt=$3
  "$bin" analyze --source "$src" --target "$tgt" --out "$work/$name"
  mkdir -p "reports/case_studies/$name"
  rm -f reports/case_studies/"$name"/*
  for f in "$work/$name"/*; do
    [ -f "$f" ] && cp "$f" "reports/case_studies/$name/"
  done
}
run animals_vs_xray "$DATA/animals" "$DATA/chest_xray"
run animals_halves "$work/halves/even" "$work/halves/odd"
run xray_vs_pneumoniamnist "$DATA/chest_xray" "$work/pneumoniamnist"
echo "case studies written under reports/case_studies/"
