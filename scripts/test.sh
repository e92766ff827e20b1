#!/usr/bin/env bash
# The test command: installs the ONNX Runtime library (idempotent), then runs clippy with warnings as
# errors and the whole test suite against the real runtime and the shared datasets.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-ort.sh
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
