#!/usr/bin/env bash
# Train the zoo's checkpoints on a lent GPU in one call, validate them on the test split there, and
# pack what comes back under $OUT. Export into hub_configs/ happens afterwards on the workstation
# (`python -m wt_zoo.hub export RUN RESULTS --name NAME`), where the cards are generated.
#
#   OUT=/tmp/out bash scripts/device_checkpoints.sh
#
# Groups train side by side: the tiny CIFAR-10 twins (plus three DEQ variants that choose the
# DEQ settings on the held-out split), the small CIFAR-10 twins, the small Fashion-MNIST twins and the
# base CIFAR-10 twins (`base`, never by default).
# Each group's common epoch count comes from `python -m wt_zoo.bench budget` and its minutes
# (TINY_MIN, SMALL_MIN: device minutes as if the group ran one recipe after another), so
# the groups together finish within the sum of their minutes. The base and fmnist groups are planned
# from their DEQ alone (BASE_MIN, FMNIST_MIN: the DEQ's minutes), since their WT twins finish long before
# it beside it. RUN_GROUPS
# picks the groups (default "tiny small fmnist"), TINY_TWINS the tiny twins trained beside the DEQ
# variants (default "wt wtsm deq"; "deq" keeps only the DEQ, the variants' reference). SMOKE=0 skips
# the fail-fast smoke run (about 50 s) when a CPU dry run has just passed.
# Wheels in .whl/ (timm, torchdeq, fvcore and the like), or the packages themselves in
# .whl/site.tar.gz, are installed first where the machine lacks them; datasets are read from .data/.
#
# Measured on a lent H200 (2026-11-28, results/device/README.md): side by side, a DEQ small epoch
# that solves takes about 44 s (about 1,000 images/s: the Anderson loop is bound by kernel launches
# and the host, not by the GPU), a WT small epoch about 14 s; a 15-minute lend therefore fits about
# 10 epochs of the small trio, not nine tags. Give the group that holds a DEQ most of the minutes,
# and trust `bench budget`'s DEQ figure (it was right within 15 %) over a warm-up epoch's speed.
#
# The tracked tree (about 100 MB with the published weights) is over the 64 MiB a device call carries:
# move hub_configs/*/model.safetensors out of the checkout for the call, and back after.
#
# A CPU dry run: TRAIN_FLAGS="--device cpu --train-subset 512 --eval-subset 256" with small minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-out}
WORK=${WORK:-/tmp/wt-zoo-device}
PY=${PY:-python3}
TINY_MIN=${TINY_MIN:-1.5}
SMALL_MIN=${SMALL_MIN:-2.6}
FMNIST_MIN=${FMNIST_MIN:-6}
BASE_MIN=${BASE_MIN:-5.5}
SMOKE=${SMOKE:-1}
DEADLINE_S=${DEADLINE_S:-440}   # training; runs still training then are cut off
VALIDATE_GRACE_S=${VALIDATE_GRACE_S:-60}   # then the test validations of finished runs
TRAIN_FLAGS=${TRAIN_FLAGS:---device cuda}
RUN_GROUPS=${RUN_GROUPS:-tiny small fmnist}
TINY_TWINS=${TINY_TWINS:-wt wtsm deq}
C=configs
has() { case " $RUN_GROUPS " in *" $1 "*) return 0 ;; esac; return 1; }
mkdir -p "$OUT" "$WORK/plans"
if [ -d .whl ] && ! $PY -c 'import torchdeq, fvcore' 2>/dev/null; then
  if [ -f .whl/site.tar.gz ]; then
    tar xzf .whl/site.tar.gz -C /tmp || exit 1
  else
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  fi
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PY PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
[ -d .data/cifar10-jpeg ] && export WT_ZOO_CIFAR10=$PWD/.data/cifar10-jpeg
[ -d .data/fashion-mnist ] && export WT_ZOO_FASHION_MNIST=$PWD/.data/fashion-mnist
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
$PY -c "import torch, timm, torchdeq; print('torch', torch.__version__, 'timm', timm.__version__)" || exit 1
START=$SECONDS

# Fail fast: one short epoch through the whole path (train, checkpoint, export, validate) before the
# budget is spent, so a broken environment costs seconds of device time, not the call.
SMOKE_DIR=$WORK/smoke
if [ "$SMOKE" = 1 ] && ! { $PY train.py --config $C/deq_resnet_tiny.c10.yaml --output "$SMOKE_DIR" --experiment smoke --no-progress \
         $TRAIN_FLAGS --epochs 1 --unrolled-warmup-epochs 0 --train-subset 512 --eval-subset 256 &&
       $PY validate.py --model "local-dir:$SMOKE_DIR/smoke" --pretrained --dataset cifar10 --split test \
         --eval-subset 256 --results-file "$SMOKE_DIR/results.json"; } >"$WORK/smoke.log" 2>&1; then
  tail -30 "$WORK/smoke.log"; echo "smoke run failed after $((SECONDS - START)) s"; exit 1
fi
[ "$SMOKE" = 1 ] && echo "smoke run passed in $((SECONDS - START)) s"

plan() {  # plan NAME MINUTES CONFIG... : the group's common epochs
  local name=$1 minutes=$2
  shift 2
  $PY -m wt_zoo.bench budget --minutes "$minutes" --json "$WORK/plans/$name.json" --train-args="$TRAIN_FLAGS" "$@" \
    >/dev/null 2>"$WORK/plans/$name.log" || { tail -20 "$WORK/plans/$name.log" >&2; return 1; }
  $PY -c "import json, sys; print(json.load(open(sys.argv[1]))['epochs'])" "$WORK/plans/$name.json"
}

deq_variant() {  # deq_variant NAME EPOCHS TRAIN FLAGS...: a tiny DEQ variant, trained and validated like the twins
  local name=$1 epochs=$2 dir=$WORK/tiny
  shift 2
  mkdir -p "$dir/logs" "$dir/results"
  { $PY train.py --config $C/deq_resnet_tiny.c10.yaml --output "$dir/train" --experiment "$name" --no-progress \
      $TRAIN_FLAGS --epochs "$epochs" "$@" &&
    $PY validate.py --model "local-dir:$dir/train/$name" --pretrained --dataset cifar10 --split test \
      --results-file "$dir/results/$name.json"; } >"$dir/logs/$name.log" 2>&1 && echo "done: $name" ||
    echo "FAILED: $name (see $dir/logs/$name.log)"
}

TINY_CONFIGS=()
for family in $TINY_TWINS; do TINY_CONFIGS+=("$C/${family}_resnet_tiny.c10.yaml"); done
has tiny && { TINY=$(plan tiny "$TINY_MIN" "${TINY_CONFIGS[@]}" $C/deq_resnet_tiny.c10.yaml $C/deq_resnet_tiny.c10.yaml \
  $C/deq_resnet_tiny.c10.yaml) || exit 1; }
has small && { SMALL=$(plan small "$SMALL_MIN" $C/{wt,wtsm,deq}_resnet_small.c10.yaml) || exit 1; }
has fmnist && { FMNIST=$(plan fmnist "$FMNIST_MIN" $C/deq_resnet_small.fmnist.yaml) || exit 1; }
has base && { BASE=$(plan base "$BASE_MIN" $C/deq_resnet_base.c10.yaml) || exit 1; }
echo "epochs: tiny ${TINY:-}, small ${SMALL:-}, fmnist ${FMNIST:-}, base ${BASE:-} (planned in $((SECONDS - START)) s)"

if has tiny; then
  scripts/train_checkpoints.sh -n -j ${#TINY_CONFIGS[@]} -o "$WORK/tiny" "${TINY_CONFIGS[@]}" -- $TRAIN_FLAGS --epochs "$TINY" &
  deq_variant deq_tiny_plain "$TINY" --unrolled-warmup-epochs 0 --model-kwargs jac_reg_weight=0 &
  deq_variant deq_tiny_warmup "$TINY" --model-kwargs jac_reg_weight=0 &
  deq_variant deq_tiny_implicit "$TINY" --model-kwargs grad_mode=implicit &
fi
has small && scripts/train_checkpoints.sh -n -j 3 -o "$WORK/small" $C/{wt,wtsm,deq}_resnet_small.c10.yaml -- $TRAIN_FLAGS --epochs "$SMALL" &
has fmnist && scripts/train_checkpoints.sh -n -j 3 -o "$WORK/fmnist" $C/{wt,wtsm,deq}_resnet_small.fmnist.yaml -- $TRAIN_FLAGS --epochs "$FMNIST" &
has base && scripts/train_checkpoints.sh -n -j 3 -o "$WORK/base" $C/{wt,wtsm,deq}_resnet_base.c10.yaml -- $TRAIN_FLAGS --epochs "$BASE" &

# Wait until all finish or the deadline passes; then stop what is left (its folder keeps last.pth.tar for --resume).
while [ $((SECONDS - START)) -lt "$DEADLINE_S" ] && [ -n "$(jobs -rp)" ]; do sleep 2; done
# A run whose training finished keeps VALIDATE_GRACE_S more for its test validation (on 2026-11-29 the deadline
# stopped the base DEQ's seconds after its last epoch).
if [ -n "$(jobs -rp)" ]; then
  echo "deadline ${DEADLINE_S}s reached: stopping unfinished training runs"
  pkill -TERM -f "train.py --config"
  while [ $((SECONDS - START)) -lt $((DEADLINE_S + VALIDATE_GRACE_S)) ] && [ -n "$(jobs -rp)" ]; do sleep 2; done
  [ -n "$(jobs -rp)" ] && { echo "validation grace ${VALIDATE_GRACE_S}s over: stopping"; pkill -TERM -f validate.py; sleep 3; }
fi
wait

# DEQ test-time solving with a larger iteration cap: does the trained block converge?
for run in "$WORK"/*/train/deq*; do
  [ -f "$run/model.safetensors" ] || continue
  group=$(dirname "$(dirname "$run")")
  name=$(basename "$run")
  dataset=$(sed -n 's/^dataset: //p' "$run/args.yaml")
  $PY validate.py --model "local-dir:$run" --pretrained --dataset "$dataset" --split test --no-flops \
    --model-kwargs f_max_iter=30 --results-file "$group/results/$name.f_max_iter30.json" >>"$group/logs/$name.log" 2>&1 &
done
wait
echo "finished in $((SECONDS - START)) s"

# A finished run keeps its weights; an unfinished one its last.pth.tar, for --resume. (On 2026-11-30 an
# archive over the limit dropped it and the fmnist DEQ, cut off two epochs short, could only be resumed on
# the still-warm machine.)
for run in "$WORK"/*/train/*; do
  [ -f "$run/model.safetensors" ] && rm -f "$run"/*.pth.tar
  rm -f "$run/best.pth.tar"
done
# A group's archive over the device tool's 16 MiB a file (the base group's weights are about 62 MiB)
# comes back in 15 MiB parts: `cat base.tar.gz.part-* | tar xz`.
for group in tiny small fmnist base; do
  [ -d "$WORK/$group" ] || continue
  tar czf "$OUT/$group.tar.gz" -C "$WORK" "$group"
  if [ "$(stat -c %s "$OUT/$group.tar.gz")" -ge 16000000 ]; then
    split -b 15M "$OUT/$group.tar.gz" "$OUT/$group.tar.gz.part-" && rm "$OUT/$group.tar.gz"
  fi
done
tar czf "$OUT/plans.tar.gz" -C "$WORK" plans
for f in "$WORK"/*/results/*.json; do
  $PY -c "import json, sys; r = json.load(open(sys.argv[1]))[0]; print(sys.argv[1].split('/')[-1], r['top1'], r.get('solver_nstep', ''), r.get('solver_rel_residual', ''))" "$f"
done
grep -h "epoch [0-9]*:" "$WORK"/*/logs/*.log | tail -5
ls -la "$OUT"
