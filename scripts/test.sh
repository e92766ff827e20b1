#!/usr/bin/env bash
# The test command: installs the ONNX Runtime library (idempotent), then runs clippy with warnings as
# errors and the whole test suite against the real runtime and the shared datasets.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-ort.sh
# Debian's Chromium renders report.html in a test (tests/common page_renders); best effort: where it cannot
# be installed the test says so instead of checking the screenshot
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
    >/dev/null 2>&1 || echo "scripts/test.sh: chromium could not be installed; the page screenshot is not checked"
fi
if command -v chromium >/dev/null 2>&1; then
  export DOMSIM_REQUIRE_BROWSER=1
fi
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
