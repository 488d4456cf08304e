#!/usr/bin/env bash
# One-shot benchmark run for a lent GPU machine (benchmarks/README.md, "Running on a lent GPU").
#
#   bash benchmarks/run_device.sh [--smoke] [--out DIR] [--budget-s SECONDS] [--only STEP,...] [--dry-run]
#
# From the repository root of a copy of the working tree: makes mmjax importable without network (the wheels
# in .whl/ from scripts/fetch_device_wheels.sh, installed into /tmp/site when the interpreter lacks them),
# then runs, each step under its own `timeout` and going on after a failed one:
#   train_mult    MulT, unaligned CMU-MOSEI shapes (T = 50/500/500), batch 24, the original main.py settings
#   train_mfm     MFM on CMU-MOSI (configs/mfm_mosi.py: batch 256, T = 20)
#   train_frozen  Frozen with a GPT-2-small-sized LM (12 layers, width 768, 12 heads), random LM weights
#   train_clip    CLIP at ViT-B/16 size (configs/clip_coco.py: 224 x 224 RGB, 16 x 16 patches; text width
#                 512, 77 tokens), global batch 128
#   attention     the attention benchmark's full grid (every kernel, PyTorch SDPA), in the time left
# The train steps use bfloat16 compute and synthetic inputs. Results: DIR (default benchmarks/results;
# with --smoke a new temporary folder) as train_step-/attention-<device>-<date>.json and the attention PNG;
# a summary of what ran, failed or timed out, and where the files are, comes last on stdout.
# Full run: 480 s in all (--budget-s); the train steps' limits are fixed, attention gets what is left.
# --smoke: the same steps at tiny sizes (CPU, seconds per step; XLA's backend optimisation turned down).
# --only train_mult,attention: run only those steps (deps and env always run), e.g. to redo one.
# --dry-run: print each step's command (shell-quoted, after "DRY-RUN NAME:") and run nothing.
# Environment: PYTHON (default python3), MMJAX_WHEELS (default .whl), MMJAX_SITE (default /tmp/site).
set -uo pipefail

usage() { sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
SMOKE=0
DRY_RUN=0
ONLY=""
OUT=""
TOTAL=""
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) SMOKE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --only) [ $# -ge 2 ] || { usage >&2; exit 2; }; ONLY=$2; shift ;;
    --only=*) ONLY=${1#--only=} ;;
    --out) [ $# -ge 2 ] || { usage >&2; exit 2; }; OUT=$2; shift ;;
    --out=*) OUT=${1#--out=} ;;
    --budget-s) [ $# -ge 2 ] || { usage >&2; exit 2; }; TOTAL=$2; shift ;;
    --budget-s=*) TOTAL=${1#--budget-s=} ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run_device.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for step in ${ONLY//,/ }; do
  case $step in
    train_mult | train_mfm | train_frozen | train_clip | attention) ;;
    *) echo "run_device.sh: --only takes train_mult, train_mfm, train_frozen, train_clip, attention; got $step" >&2
       exit 2 ;;
  esac
done
case $TOTAL in '' | *[!0-9]*) [ -z "$TOTAL" ] || { echo "run_device.sh: --budget-s takes whole seconds" >&2; exit 2; } ;; esac

case $OUT in '' | /*) ;; *) OUT=$PWD/$OUT ;; esac  # relative to where it was called from
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO=$PWD
export PY=${PYTHON:-python3}
export WHEELS=${MMJAX_WHEELS:-.whl}
export SITE=${MMJAX_SITE:-/tmp/site}
export PYTHONUNBUFFERED=1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mmjax-run-device.XXXXXX")  # step logs and the status table
STATUS=$WORK/status.tsv
: >"$STATUS"
if [ "$SMOKE" = 1 ]; then
  MODE=smoke
  OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/mmjax-smoke-results.XXXXXX")}
  TOTAL=${TOTAL:-900}
  # A check that everything runs, not a measurement: spend less time in XLA's CPU backend (LLVM).
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
else
  MODE=full
  OUT=${OUT:-benchmarks/results}
  TOTAL=${TOTAL:-480}
fi
[ "$DRY_RUN" = 1 ] || mkdir -p "$OUT"
START=$(date +%s)
DEADLINE=$((START + TOTAL))
echo "run_device.sh ($MODE): results to $OUT, $TOTAL s in all, logs in $WORK"

# One step: NAME LIMIT_S COMMAND... under `timeout`; its output is shown and kept in $WORK/NAME.log.
run_step() {
  local name=$1 limit=$2 t0 rc status
  shift 2
  case ",$ONLY,deps,env," in *",$name,"*) ;; *) [ -z "$ONLY" ] || return 0 ;; esac
  if [ "$DRY_RUN" = 1 ]; then
    printf 'DRY-RUN %s:' "$name"
    printf ' %q' "$@"
    echo
    return
  fi
  t0=$(date +%s)
  echo
  echo "=== [$name] limit ${limit} s: $*"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status=ok ;;
    124 | 137) status=TIMEOUT ;;
    *) status="FAILED(rc=$rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" "$limit" >>"$STATUS"
  echo "=== [$name] $status after $(($(date +%s) - t0)) s"
}

# Dependencies: nothing to do where they import; else install the carried wheels (no index, no deps).
NEEDED="import tensorflow_datasets, grain, ml_collections, tensorboardX, array_record, tree"
export NEEDED REPO
install_deps() {
  if "$PY" -c "$NEEDED" 2>/dev/null; then
    echo "tensorflow-datasets, grain, ml-collections, tensorboardX import: nothing to install"
    return 0
  fi
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "missing packages and no wheels in $WHEELS/: run scripts/fetch_device_wheels.sh here and carry .whl"
    return 1
  fi
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "$WHEELS"/*.whl || return 1
  local f want
  for f in "$WHEELS"/optional/protobuf-*.whl; do  # only where the image's protobuf is older
    [ -e "$f" ] || continue
    want=$(basename "$f" | cut -d- -f2)
    if ! "$PY" -c "import sys, google.protobuf as p
v = lambda s: tuple(int(x) for x in s.split('.')[:3])
sys.exit(v(p.__version__) < v(sys.argv[1]))" "$want" 2>/dev/null; then
      echo "the image's protobuf is older than $want: installing $(basename "$f")"
      "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" "$f" || return 1
    fi
  done
  touch "$WORK/installed"
  PYTHONPATH=$SITE:$REPO "$PY" -c "$NEEDED" && echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE"
}
export -f install_deps
export WORK
run_step deps 60 bash -c install_deps
if [ -e "$WORK/installed" ]; then
  export PYTHONPATH=$SITE:$REPO
else
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
run_step env 60 "$PY" benchmarks/run_device.py env

BENCH=("$PY" -m mmjax bench train_step --synthetic --out "$OUT")
BF16=(--config.precision=bfloat16)
if [ "$MODE" = full ]; then
  STEPS=(--steps 30 --warmup 5)
  # The original main.py: batch 24, d = 30, 5 layers, 5 heads, kernel size 1, its dropouts and clipping.
  MULT=(--config configs/mult_mosei.py:unaligned --config.batch_size=24 --config.model.kwargs.width=30
        --config.model.kwargs.num_layers=5 --config.model.kwargs.num_heads=5
        "--config.model.kwargs.kernel_sizes=(1,1,1)" --config.model.kwargs.embed_dropout=0.25
        --config.model.kwargs.attn_dropout=0.1 --config.model.kwargs.out_dropout=0.0
        --config.optimizer.clip_norm=0.8)
  MFM=(--config configs/mfm_mosi.py)
  FROZEN=(--config configs/frozen_digits.py --config.model.kwargs.lm.n_layer=12
          --config.model.kwargs.lm.n_embd=768 --config.model.kwargs.lm.n_head=12)
  CLIP=(--config configs/clip_coco.py:bench --config.batch_size=128)
  LIMITS=(120 60 90 90)
  ATTENTION=(--full)
else  # the same steps and override keys at tiny sizes
  STEPS=(--steps 2 --warmup 1)
  MULT=(--config configs/mult_mosei.py:unaligned --config.batch_size=8 --config.model.kwargs.width=8
        --config.model.kwargs.num_layers=1 --config.model.kwargs.num_heads=2
        "--config.model.kwargs.kernel_sizes=(1,1,1)" --config.model.kwargs.embed_dropout=0.25
        --config.model.kwargs.attn_dropout=0.1 --config.model.kwargs.out_dropout=0.0
        --config.optimizer.clip_norm=0.8 --config.data.max_lengths.text=8
        --config.data.max_lengths.audio=16 --config.data.max_lengths.vision=16)
  MFM=(--config configs/mfm_mosi.py --config.batch_size=8 --config.model.kwargs.width=16
       --config.model.kwargs.factor_dim=8)
  FROZEN=(--config configs/frozen_digits.py:runlocal --config.model.kwargs.lm.n_layer=2
          --config.model.kwargs.lm.n_embd=64 --config.model.kwargs.lm.n_head=4)
  CLIP=(--config configs/clip_coco.py:bench,runlocal --config.batch_size=8)
  LIMITS=(240 180 180 180)
  ATTENTION=(--smoke --reps 1)
fi
NO_INIT=(--config.init.format= --config.init.path=)  # Frozen: a random LM, no stage-1 checkpoint

run_step train_mult "${LIMITS[0]}" "${BENCH[@]}" "${STEPS[@]}" "${MULT[@]}" "${BF16[@]}"
run_step train_mfm "${LIMITS[1]}" "${BENCH[@]}" "${STEPS[@]}" "${MFM[@]}" "${BF16[@]}"
run_step train_frozen "${LIMITS[2]}" "${BENCH[@]}" "${STEPS[@]}" "${FROZEN[@]}" "${NO_INIT[@]}" "${BF16[@]}"
run_step train_clip "${LIMITS[3]}" "${BENCH[@]}" "${STEPS[@]}" "${CLIP[@]}" "${BF16[@]}"

# Attention last, in the time left: it stops starting measurements 30 s before its limit (then writes
# the PNG), and its JSON is rewritten after every measurement, so even a kill keeps what finished.
LEFT=$((DEADLINE - $(date +%s) - 10))
if [ "$LEFT" -ge 40 ]; then
  run_step attention "$LEFT" "$PY" -m mmjax bench attention "${ATTENTION[@]}" --out "$OUT" \
    --budget-s $((LEFT - 30))
else
  printf 'attention\tSKIPPED(no time left)\t0\t%s\n' "$LEFT" >>"$STATUS"
fi

[ "$DRY_RUN" = 0 ] || { rm -rf "$WORK"; exit 0; }
"$PY" benchmarks/run_device.py summary --mode "$MODE" --status "$STATUS" --out "$OUT" --start "$START" \
  --total "$TOTAL" --logs "$WORK"
