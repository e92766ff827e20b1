#!/usr/bin/env bash
# Times a full `domsim compare` (every metric + within-set CKA) on synthetic Gaussian embeddings, and measures
# its peak memory with /usr/bin/time -v:
#   1. 16 layers with the bundled model's dimensions, n = 2000 + 2000 (labels on the target);
#   2. 3 layers (d = 64, 512, 1280), n = 20,000 per side.
# Needs .venv (scripts/pyenv.sh) for numpy. Usage: bash benches/compare_scale.sh [THREADS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
threads="${1:-2}"
cargo build --release --quiet
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
.venv/bin/python - "$tmp" <<'PY'
import os, sys
import numpy as np
root = sys.argv[1]
rng = np.random.default_rng(0)
def make(name, n, dims, shift, labels):
    d = os.path.join(root, name); os.makedirs(d)
    for i, k in enumerate(dims):
        np.save(os.path.join(d, f"{i:02d}_layer.npy"), (rng.standard_normal((n, k)) + shift).astype(np.float32))
    if labels:
        with open(os.path.join(d, "labels.csv"), "w") as f:
            f.write("row,label\n" + "".join(f"{r},{'a' if r % 2 else 'b'}\n" for r in range(n)))
dims16 = [32, 16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 320, 1280]
make("s16", 2000, dims16, 0.0, False); make("t16", 2000, dims16, 0.1, True)
make("s20k", 20000, [64, 512, 1280], 0.0, False); make("t20k", 20000, [64, 512, 1280], 0.1, True)
PY
for case in 16 20k; do
  /usr/bin/time -v target/release/domsim --quiet --threads "$threads" compare --source "$tmp/s$case" --target "$tmp/t$case" --out "$tmp/r$case" 2> "$tmp/time$case"
  echo "compare ($case): wall $(grep 'Elapsed (wall' "$tmp/time$case" | awk '{print $NF}'), peak RSS $(grep 'Maximum resident' "$tmp/time$case" | awk '{print $NF}') KB, threads $threads"
done
