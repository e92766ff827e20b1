#!/usr/bin/env bash
# Injected-causes validation of the colour and resolution controls (see study.py). About 10 minutes on 2 cores.
#   bash reports/gap_sources/run.sh [SEEDS]      (default 0,1,2; DOMSIM_DATASETS overrides ../shared/datasets)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash scripts/install-ort.sh >/dev/null
cargo build --release --quiet
bash reports/gap_sources/setup_venv.sh
reports/gap_sources/.venv/bin/python -m pytest -q reports/gap_sources/test_study.py
reports/gap_sources/.venv/bin/python reports/gap_sources/study.py run --seeds "${1:-0,1,2}"
