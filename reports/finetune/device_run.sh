#!/usr/bin/env bash
# Runs missing cells of the study on a CUDA machine that has torch but not ../shared (the workplace's `device`
# tool). Prepare here, where the study's venv and target/finetune exist:
#   reports/finetune/.venv/bin/python reports/finetune/study.py pack .gpu --targets chest_xray,pneumoniamnist --budgets 100,300
# then run there, from the repository root, with .gpu carried:
#   OUT=$OUT bash reports/finetune/device_run.sh 480
# Every cell ("target:budget" in CELLS) trains in its own process on the GPU; no run starts after SECONDS
# (the argument) have passed; predictions and the grid are snapshotted into $OUT/results.tar every 15 s, so
# what finished comes back even if the call is cut, with each cell's log under logs/ (the device tool returns
# at most 8 files). Unpack here with `tar xf results.tar -C <a scratch folder>`, then copy predictions/ into
# reports/finetune/results and merge (do not overwrite) lr_grid.csv. Every run's meta records torch's version
# and device.
set -u
budget=${1:-480}
PY=${PY:-python3}
DEV=${DEV:-cuda}
PACK=$(realpath "${PACK:-.gpu}")
CELLS=${CELLS:-"chest_xray:300 pneumoniamnist:300 chest_xray:100 pneumoniamnist:100"}
OUT=${OUT:-/tmp/device_out}
THREADS=${THREADS:-3}
LOGS=$(mktemp -d)
mkdir -p "$OUT" "$LOGS/logs"
cd "$(dirname "$0")" || exit 2
export PYTHONPATH="$PACK/site" DOMSIM_FINETUNE_WORK="$PACK/work" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; $PY -c 'import torch; print(torch.__version__)'; } >"$OUT/machine.txt" 2>&1
$PY study.py verify "$PACK/hashes.json" >"$OUT/verify.txt" 2>&1 || { cat "$OUT/verify.txt"; exit 3; }
deadline=$(($(date +%s) + budget))
pids=()
for cell in $CELLS; do
  t=${cell%:*} b=${cell#*:}
  $PY study.py train --device "$DEV" --threads "$THREADS" --targets "$t" --budgets "$b" --deadline "$deadline" \
    >"$LOGS/logs/log_${t}_$b.txt" 2>&1 &
  pids+=($!)
done
snapshot() {
  tar cf "$OUT/results.tar.tmp" -C results predictions lr_grid.csv -C "$LOGS" logs && mv "$OUT/results.tar.tmp" "$OUT/results.tar"
}
while :; do
  alive=0
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ $alive = 1 ] || break
  sleep 15
  snapshot
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
snapshot
cat "$OUT/machine.txt" "$OUT/verify.txt"
for f in "$LOGS"/logs/log_*.txt; do echo "== $f"; tail -n 4 "$f"; done
exit $rc
