#!/usr/bin/env bash
# Seed stability of the verdict on data the rule was not tuned on: animals -> the fine-tuning study's held-back
# test splits (300 images per class; the study scores fine-tuning on these images, but domsim, whose evidence
# the rule reads, never ran on them): the chest X-rays (patient-grouped; a shift through the network, MMD²
# ratio about 1.7 -> freeze the first half) and PneumoniaMNIST (ratio about 3.0: LP-FT under the rule up to
# stop 30, the same plan as the X-rays since EARLY_SHIFT_RATIO is 4.0). Default settings, seeds 0-9;
# embeddings extracted once, then
# `compare --seed S` + `report` per seed. Writes reports/stability/results/stability.md.
# Run: bash reports/stability/run.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DATA="${DOMSIM_DATASETS:-../shared/datasets}"
bash scripts/install-ort.sh
cargo build --release --quiet
bin=target/release/domsim
work=target/stability
mkdir -p "$work"
# PneumoniaMNIST as class folders of PNGs (the study's own conversion, in the study's environment)
bash reports/finetune/setup_venv.sh
reports/finetune/.venv/bin/python reports/finetune/study.py npz2dir "$DATA/pneumoniamnist.npz" target/finetune/datasets/pneumoniamnist
[ -f "$work/emb/animals/manifest.json" ] || "$bin" --quiet extract --images "$DATA/animals" --out "$work/emb/animals" --force
out=reports/stability/results/stability.md
: > "$out.tmp"
for set in chest_xray:"$DATA/chest_xray" pneumoniamnist:target/finetune/datasets/pneumoniamnist; do
  name="${set%%:*}" src="${set#*:}"
  held="$work/$name/images"
  # the held-back images, as class folders of links (from the study's split file)
  python3 - "$src" "$held" "$name" <<'PY'
import json, os, sys
src, out, name = sys.argv[1:4]
for rel, cls, _ in json.load(open(f"reports/finetune/results/splits/{name}.json"))["test"]:
    os.makedirs(os.path.join(out, cls), exist_ok=True)
    link = os.path.join(out, rel)
    if not os.path.lexists(link):
        os.symlink(os.path.abspath(os.path.join(src, rel)), link)
PY
  [ -f "$work/$name/emb/manifest.json" ] || "$bin" --quiet extract --images "$held" --out "$work/$name/emb" --force
  # every seed is compared again (about 4 s each): a comparison kept from an earlier binary would report the
  # stability of an earlier rule or statistic
  for s in 0 1 2 3 4 5 6 7 8 9; do
    /usr/bin/time -f "%e" -o "$work/$name/seed$s.time" "$bin" --quiet --seed "$s" compare --no-similarity --force \
      --source "$work/emb/animals" --target "$work/$name/emb" --out "$work/$name/seed$s"
    "$bin" --quiet report "$work/$name/seed$s" > /dev/null
  done
  python3 reports/stability/summarise.py "$work/$name" "$name" >> "$out.tmp"
done
mv "$out.tmp" "$out"
cat "$out"
