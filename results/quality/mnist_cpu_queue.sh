#!/usr/bin/env bash
# Issue 28's CPU queue for one model (MNIST by default), one step after another, each resumable:
#   1      reference statistics of the 10k test split, both protocols (cached once)
#   2      the rest of the 150-minute training budget (the checkpoints carry the clock)
#   export the last checkpoint as a model folder in $RUN/export (the sweep reads it)
#   sweep  sampler x network calls x guidance at small N (SWEEP_N samples, pytorch_fid, against
#          the full test statistics) into $RUN/sweep/<sampler>_nfe<N>_g<G>/eval/ (one record each)
#   final  --mode=train_and_eval (the budget is spent: no training) with the sweep's best
#          setting (or SAMPLER / NFE / GUIDANCE): 10,000 samples, both protocols -> $RUN/quality.json
#   floor  the real-data floor: 10,000 training images against the same test statistics
#   curve  SWEEP_N-sample FIDs of the kept checkpoints CURVE_STEPS at the final setting
# Usage: nohup bash results/quality/mnist_cpu_queue.sh [STEPS] > /work/runs/queue.log 2>&1 &
#   STEPS: default "1 2 export sweep final floor curve". Env: RUN, DATA_DIR, WEIGHTS, CONFIG,
#   PROTOCOL, DATASET (tfds name), NPZ (the split's images for the floor), FLOOR_PROTOCOLS, SWEEP,
#   SWEEP_N, CURVE_STEPS.
set -uo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-/work/runs/mnist_quality_cpu}
DATA_DIR=${DATA_DIR:-$HOME/tensorflow_datasets}
SHARED=$(cd .. && pwd)/shared/data
WEIGHTS=${WEIGHTS:-$SHARED/inception-2015-12-05_fid_torchscript.pt}
CONFIG=${CONFIG:-mnist_quality_cpu}
NPZ=${NPZ:-$SHARED/mnist.npz:x_train[0:10000]}
SWEEP=${SWEEP:-dpm++2m_sde:40:1.5 dpm++2m:20:1.5 dpm++2m_sde:40:2.0}  # sampler:nfe:guidance
SWEEP_N=${SWEEP_N:-1000}
CURVE_STEPS=${CURVE_STEPS:-500 1500 2500}
PROTOCOL=${PROTOCOL:-both}  # of the reference statistics and the final FID (tf, pytorch_fid)
STEPS=${1:-1 2 export sweep final floor curve}
common=(--config="$CONFIG" --config.data.data_dir="$DATA_DIR" --config.fid.weights="$WEIGHTS")
main() { nice -n 2 python -m diffusion_jax.main "${common[@]}" "$@"; }
stamp() { echo "== $(date -u +%FT%TZ) $*"; }
small=(--config.fid.eval_samples="$SWEEP_N" --config.fid.protocol=pytorch_fid)

best() {  # "sampler nfe guidance" of the lowest sweep FID (SAMPLER / NFE / GUIDANCE override it)
  python - "$RUN/sweep" <<'EOF'
import json, pathlib, sys
recs = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).glob("*/eval/fid_*.json")]
if not recs:
    sys.exit(f"no sweep records under {sys.argv[1]}: run step sweep, or set SAMPLER, NFE and GUIDANCE")
r = min(recs, key=lambda r: r["fid"]["pytorch_fid"])
print(r["sampler"], r["steps"], r["guidance"])
EOF
}

for step in $STEPS; do
  case $step in
    1) stamp "reference statistics ($PROTOCOL)"
       main --workdir="$RUN" --mode=fid_stats --config.fid.protocol="$PROTOCOL" ;;
    2) stamp "training (resumes)"; main --workdir="$RUN" --config.train.keep_checkpoints=60 ;;
    export) stamp "export"; main --workdir="$RUN" --mode=export --export_to="$RUN/export" ;;
    sweep) for s in $SWEEP; do
         IFS=: read -r smp nfe g <<<"$s"; out="$RUN/sweep/${smp}_nfe${nfe}_g${g}"
         if ls "$out"/eval/fid_*.json >/dev/null 2>&1; then continue; fi
         stamp "sweep $smp nfe=$nfe guidance=$g"
         main --workdir="$out" --mode=eval --checkpoint=pretrained:"$RUN/export" \
           --config.sample.sampler="$smp" --config.sample.num_steps="$nfe" \
           --config.sample.guidance="$g" "${small[@]}"
       done ;;
    final) read -r smp nfe g <<<"$(best)"; smp=${SAMPLER:-$smp}; nfe=${NFE:-$nfe}; g=${GUIDANCE:-$g}
       [ -n "$smp" ] && [ -n "$nfe" ] && [ -n "$g" ] || { echo "final: no setting"; exit 2; }
       stamp "full protocol $smp nfe=$nfe guidance=$g"
       main --workdir="$RUN" --mode=train_and_eval --config.fid.protocol="$PROTOCOL" \
         --config.sample.sampler="$smp" --config.sample.num_steps="$nfe" \
         --config.sample.guidance="$g" ;;
    floor) for p in ${FLOOR_PROTOCOLS:-pytorch_fid tf}; do
         stamp "real-data floor ($p)"
         stats=$(ls ~/.cache/diffusion_jax/fid_stats/"${DATASET:-mnist}-test-$p"-*.npz | head -1)
         nice -n 2 python -m diffusion_jax.fid "$NPZ" "$stats" --protocol="$p" \
           --weights="$WEIGHTS" --batch_size=100 --no_progress | tee "$RUN/floor_$p.txt"
       done ;;
    curve) read -r smp nfe g <<<"$(best)"; smp=${SAMPLER:-$smp}; nfe=${NFE:-$nfe}; g=${GUIDANCE:-$g}
       [ -n "$smp" ] && [ -n "$nfe" ] && [ -n "$g" ] || { echo "curve: no setting"; exit 2; }
       for c in $CURVE_STEPS; do
         [ -e "$RUN/curve/eval/fid_$c.json" ] && continue
         stamp "curve step $c ($smp nfe=$nfe guidance=$g)"
         mkdir -p "$RUN/curve"
         main --workdir="$RUN" --mode=eval --checkpoint="$c" --config.sample.sampler="$smp" \
           --config.sample.num_steps="$nfe" --config.sample.guidance="$g" "${small[@]}" && mkdir -p "$RUN/curve/eval" \
           && mv "$RUN/eval/fid_$c.json" "$RUN/curve/eval/"
       done ;;
  esac
done
stamp done
