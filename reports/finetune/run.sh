#!/usr/bin/env bash
# The fine-tuning ground truth, from a clean clone: builds domsim, creates the study's own virtual environment
# from PyPI (requirements.txt, pinned), prepares the splits and images, proves the torch network reproduces
# domsim's features, trains every configuration x seed not yet in results.csv (resumable: runs append as
# they finish), then summarises (summary.csv, ground_truth.json, agreement.md, finetune_by_depth.png).
#   bash reports/finetune/run.sh                      # everything
#   bash reports/finetune/run.sh --targets chest_xray # one target (train step only; summarise covers all)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash scripts/install-ort.sh
cargo build --release --quiet
bash reports/finetune/setup_venv.sh
py=reports/finetune/.venv/bin/python
$py reports/finetune/study.py prepare
$py reports/finetune/study.py check
$py reports/finetune/study.py train "$@"
$py reports/finetune/study.py summarise
