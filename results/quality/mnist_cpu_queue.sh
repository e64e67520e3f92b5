#!/usr/bin/env bash
# Issue 28's CPU queue for MNIST, one step after another, each resumable (rerun to go on):
#   1. reference statistics of the 10k test split, both protocols (cached once, ~1 h)
#   2. the rest of the 150-minute training budget (the checkpoints carry the clock)
#   3. a small-N sweep of guidance and network calls (1,000 samples, pytorch_fid, full test
#      reference) on the last checkpoint, into $RUN/eval/ (one record per setting)
#   4. the full-protocol FID: 10,000 samples, both protocols, with the sweep's best setting
#      (GUIDANCE / NFE override it)
# Usage: nohup bash results/quality/mnist_cpu_queue.sh [STEPS] > /work/runs/queue.log 2>&1 &
#   STEPS: a subset such as "1 2" (default: 1 2 export 3 4; export = the last checkpoint as
#   a model folder in $RUN/export, which step 3 reads). RUN, DATA_DIR, WEIGHTS, CONFIG: env.
set -uo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-/work/runs/mnist_quality_cpu}
DATA_DIR=${DATA_DIR:-$HOME/tensorflow_datasets}
WEIGHTS=${WEIGHTS:-$(cd .. && pwd)/shared/data/inception-2015-12-05_fid_torchscript.pt}
CONFIG=${CONFIG:-mnist_quality_cpu}
STEPS=${1:-1 2 export 3 4}
common=(--config="$CONFIG" --config.data.data_dir="$DATA_DIR" --config.fid.weights="$WEIGHTS")
main() { nice -n 2 python -m diffusion_jax.main "${common[@]}" "$@"; }
stamp() { echo "== $(date -u +%FT%TZ) $*"; }

for step in $STEPS; do
  case $step in
    1) stamp "reference statistics"; main --workdir="$RUN" --mode=fid_stats ;;
    2) stamp "training (resumes)"; main --workdir="$RUN" --config.train.keep_checkpoints=60 ;;
    3) for nfe in 10 20 40; do for g in 1.0 1.5 2.0 3.0; do
         stamp "sweep nfe=$nfe guidance=$g"
         main --workdir="$RUN/sweep/nfe${nfe}_g${g}" --mode=eval --checkpoint=pretrained:"$RUN/export" \
           --config.sample.num_steps="$nfe" --config.sample.guidance="$g" \
           --config.fid.eval_samples=1000 --config.fid.protocol=pytorch_fid
       done; done ;;
    4) stamp "full protocol"; main --workdir="$RUN" --mode=eval \
         --config.sample.num_steps="${NFE:-20}" --config.sample.guidance="${GUIDANCE:-1.0}" ;;
    export) stamp "export"; main --workdir="$RUN" --mode=export --export_to="$RUN/export" ;;
  esac
done
stamp done
