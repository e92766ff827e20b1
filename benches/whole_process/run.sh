#!/usr/bin/env bash
# Whole-process benchmark, as a user meets it: `domsim extract` against the Python script a user would write
# (reference.py: PIL + numpy + onnxruntime), same model, same 19 layers, same pooling, 2 threads each,
# alternating runs (A B A B ...), on the animal photos and on the cats vs dogs photos. Reports the median of
# the per-pair ratios (Python time / domsim time) and each side's peak memory (max RSS), and writes
# benches/whole_process/results.md.
#   bash benches/whole_process/run.sh [PAIRS]        (default 3 pairs per set)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
pairs="${1:-3}"
datasets="${DOMSIM_DATASETS:-$root/../shared/datasets}"
bash scripts/install-ort.sh >/dev/null
cargo build --release --quiet
venv=benches/whole_process/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r benches/whole_process/requirements.txt
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
bin="$root/target/release/domsim"
model="$root/data/models/efficientnet_lite0.onnx"
"$bin" layers --json > "$tmp/layers.json"
out=benches/whole_process/results.md
{
  echo "# Whole-process extraction: domsim vs the Python script a user would write"
  echo
  echo "\`bash benches/whole_process/run.sh $pairs\` on $(nproc) cores, $(date -u +%Y-%m-%d). Each pair runs"
  echo "\`domsim --threads 2 extract\` and \`reference.py\` (ONNX Runtime 2 intra-op threads) one after the"
  echo "other on the same images; ratio = Python wall time / domsim wall time (higher: domsim faster)."
  echo
  echo "| images | pair | domsim s | Python s | ratio | domsim max RSS MB | Python max RSS MB |"
  echo "|---|---|---|---|---|---|---|"
} > "$out"
for set in animals cats_dogs; do
  ratios=()
  for p in $(seq 1 "$pairs"); do
    /usr/bin/time -f "%e %M" -o "$tmp/d" "$bin" --threads 2 --quiet extract --images "$datasets/$set" --out "$tmp/d_out" --force
    /usr/bin/time -f "%e %M" -o "$tmp/p" "$venv/bin/python" benches/whole_process/reference.py "$model" "$tmp/layers.json" "$datasets/$set" "$tmp/p_out"
    read -r ds dm < "$tmp/d"
    read -r ps pm < "$tmp/p"
    r=$(python3 -c "print(f'{$ps/$ds:.3f}')")
    ratios+=("$r")
    echo "| $set | $p | $ds | $ps | $r | $((dm / 1024)) | $((pm / 1024)) |" >> "$out"
  done
  med=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}')
  echo "$set: median ratio $med" | tee -a "$tmp/summary"
done
{
  echo
  echo "Median of the per-pair ratios:"
  echo
  sed 's/^/- /' "$tmp/summary"
  echo
  echo "Embeddings agree: the benchmark's last pair is checked layer by layer (max |domsim - Python| below)."
  "$venv/bin/python" - "$tmp/d_out" "$tmp/p_out" <<'PY'
import glob, os, sys
import numpy as np
d = sorted(glob.glob(os.path.join(sys.argv[1], "layers", "*.npy")))
p = sorted(glob.glob(os.path.join(sys.argv[2], "*.npy")))
worst = max(float(np.abs(np.load(a) - np.load(b)).max() / (np.abs(np.load(b)).max() + 1e-12)) for a, b in zip(d, p))
corr = min(float(np.corrcoef(np.load(a).ravel(), np.load(b).ravel())[0, 1]) for a, b in zip(d, p))
print(f"- {len(d)} layers, same shapes; lowest correlation between the two programs' values at a layer: {corr:.4f}; "
      f"largest single difference relative to the layer's largest value: {worst:.2e} (the resize filters "
      "differ: PIL's antialiased bilinear on the whole image, then a crop, vs fast_image_resize's on the crop)")
PY
} >> "$out"
cat "$out"
