#!/usr/bin/env bash
# Installs the ONNX Runtime shared library into the project-local, git-ignored folder `.ort/`
# from the PyPI `onnxruntime` wheel (the `ort` crate's own CDN download is unreachable here).
# Idempotent: does nothing when the pinned version is already present.
set -euo pipefail
ORT_VERSION="${ORT_VERSION:-1.31.1}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.ort"
lib="$dest/libonnxruntime.so"
if [ -f "$dest/VERSION" ] && [ "$(cat "$dest/VERSION")" = "$ORT_VERSION" ] && [ -f "$lib" ]; then
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "domsim: fetching ONNX Runtime $ORT_VERSION from the PyPI onnxruntime wheel ..." >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version 3.11 \
  --platform manylinux_2_28_x86_64 "onnxruntime==$ORT_VERSION" -d "$tmp"
whl="$(ls "$tmp"/onnxruntime-*.whl)"
python3 - "$whl" "$tmp/x" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if n.startswith("onnxruntime/capi/libonnxruntime.so"):
            z.extract(n, sys.argv[2])
PY
mkdir -p "$dest"
so="$(ls "$tmp"/x/onnxruntime/capi/libonnxruntime.so.* | head -n1)"
cp "$so" "$dest/libonnxruntime.so.tmp"
mv -f "$dest/libonnxruntime.so.tmp" "$lib"
echo "$ORT_VERSION" > "$dest/VERSION"
echo "domsim: ONNX Runtime $ORT_VERSION installed at $lib" >&2
