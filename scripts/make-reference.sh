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
controls="${out}_controls"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/animals"
i=0
while IFS= read -r f; do
  [ $((i % 4)) -eq 0 ] && ln -s "$datasets/animals/$f" "$tmp/animals/$f"
  i=$((i + 1))
done < <(cd "$datasets/animals" && find . -type f | LC_ALL=C sort | sed 's|^\./||')
for px in "" 112 56 28; do
  for grey in 0 1; do
    [ -z "$px" ] && [ $grey -eq 0 ] && continue
    name=${px:+px$px}
    args=()
    [ -n "$px" ] && args+=(--downsample "$px")
    [ $grey -eq 1 ] && { args+=(--grey); name=${name:+${name}_}grey; }
    (cd "$tmp" && "$bin" --quiet --threads 1 extract --images animals --out "$controls/$name" --float16 --force "${args[@]}")
  done
done
du -sh "$out" "$controls"
