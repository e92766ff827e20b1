#!/usr/bin/env bash
# Creates the git-ignored Python environment `.venv/` used only to REGENERATE committed fixtures and golden
# values and to run the numpy/scikit-learn comparison benchmarks. Tests and CI never need it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -x "$root/.venv/bin/python" ]; then
  python3 -m venv "$root/.venv"
fi
"$root/.venv/bin/pip" install --quiet numpy==2.* onnx==1.* onnxruntime==1.31.1 scikit-learn==1.* pillow
