#!/usr/bin/env bash
# Train, validate and export zoo checkpoints from their recipes, several at once on one device.
#
#   scripts/train_checkpoints.sh [-j JOBS] [-o OUT] CONFIG.yaml ... [-- EXTRA TRAIN.PY FLAGS]
#
# For each recipe: train.py --config CONFIG (run folder OUT/train/<arch>.<tag>, resumed if it
# exists), validate.py on the test split (OUT/results/<arch>.<tag>.json), then
# `python -m wt_zoo.hub export` into hub_configs/. JOBS recipes run side by side (default 1; on a
# GPU, 3 small models fill it better than one). EXTRA flags go to train.py only, e.g. a CPU smoke
# run: `scripts/train_checkpoints.sh -o /tmp/smoke configs/wt_resnet_tiny.c10.yaml -- --epochs 1
# --train-subset 512 --eval-subset 256`. Smoke runs must not be exported: pass -n.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=1
OUT=output/checkpoints
EXPORT=1
while getopts "j:o:n" opt; do
  case $opt in
    j) JOBS=$OPTARG ;;
    o) OUT=$OPTARG ;;
    n) EXPORT=0 ;;
    *) echo "usage: $0 [-j JOBS] [-o OUT] [-n] CONFIG.yaml ... [-- TRAIN FLAGS]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
CONFIGS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do CONFIGS+=("$1"); shift; done
[ $# -gt 0 ] && shift
EXTRA=("$@")
[ ${#CONFIGS[@]} -gt 0 ] || { echo "$0: name at least one configs/*.yaml" >&2; exit 2; }
mkdir -p "$OUT/train" "$OUT/results" "$OUT/logs"

one() {
  local config=$1 name dataset
  name=$(basename "$config" .yaml)
  dataset=$("$PY" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['dataset'])" "$config")
  local run="$OUT/train/$name" log="$OUT/logs/$name.log" results="$OUT/results/$name.json"
  local resume=()
  [ -f "$run/last.pth.tar" ] && resume=(--resume "$run")
  # Each step only after the previous one succeeded (errexit does not apply inside an && list).
  {
    "$PY" train.py --config "$config" --output "$OUT/train" --experiment "$name" --no-progress \
      "${resume[@]}" "${EXTRA[@]}" &&
    "$PY" validate.py --model "local-dir:$run" --pretrained --dataset "$dataset" --split test \
      --results-file "$results" &&
    if [ "$EXPORT" = 1 ]; then
      "$PY" -m wt_zoo.hub export "$run" "$results" --name "$name" --overwrite
    fi
  } >"$log" 2>&1 && echo "done: $name ($log)" || { echo "FAILED: $name (see $log)" >&2; return 1; }
}

status=0
running=0
for config in "${CONFIGS[@]}"; do
  one "$config" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then
    wait -n || status=1
    running=$((running - 1))
  fi
done
while [ "$running" -gt 0 ]; do wait -n || status=1; running=$((running - 1)); done
exit $status
