#!/usr/bin/env bash
# Regenerates the bundled source reference, data/reference/efficientnet_lite0_animals/: the 398 ImageNet photos
# of ../shared/datasets/animals (override: DOMSIM_DATASETS) embedded by the bundled EfficientNet-Lite0 at every
# default layer, with the default settings, one thread (so the bytes do not depend on the machine's core
# count), matrices stored as float16. Writes data/reference/animals.sha256 (which images, by content) beside
# it. Byte-identical on rerun; tests/reference.rs checks that.
#   bash scripts/make-reference.sh [OUT_DIR]      (DOMSIM_BIN=path uses that binary instead of building one)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
datasets="${DOMSIM_DATASETS:-$root/../shared/datasets}"
out="${1:-$root/data/reference/efficientnet_lite0_animals}"
case "$out" in /*) ;; *) out="$root/$out" ;; esac
bash scripts/install-ort.sh >/dev/null
bin="${DOMSIM_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin="$root/target/release/domsim"
fi
# run from the datasets folder so that the manifest records the portable name "animals", not this machine's path
(cd "$datasets" && "$bin" --quiet --threads 1 extract --images animals --out "$out" --float16 --force)
(cd "$datasets/animals" && find . -type f | LC_ALL=C sort | sed 's|^\./||' | xargs -d '\n' sha256sum) > "$(dirname "$out")/animals.sha256"
du -sh "$out"
