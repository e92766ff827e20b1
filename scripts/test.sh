#!/usr/bin/env bash
# The test command: installs the ONNX Runtime library (idempotent), then runs clippy with warnings as
# errors and the whole test suite against the real runtime and the shared datasets.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-ort.sh
# Debian's Chromium renders report.html in a test (tests/common page_renders); best effort: where it cannot
# be installed the test says so instead of checking the screenshot
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (timeout 300 apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends chromium) \
    >/dev/null 2>&1 || echo "scripts/test.sh: chromium could not be installed; the page screenshot is not checked"
fi
# the screenshot check is required once chromium has shown it can take one here
shot=$(mktemp -d)
if command -v chromium >/dev/null 2>&1 && printf '<p>domsim</p>' > "$shot/p.html" &&
  timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$shot/profile" --screenshot="$shot/p.png" "file://$shot/p.html" >/dev/null 2>&1 &&
  [ -s "$shot/p.png" ]; then
  export DOMSIM_REQUIRE_BROWSER=1
else
  echo "scripts/test.sh: no working headless chromium; the page screenshot is not checked"
fi
rm -rf "$shot"
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
