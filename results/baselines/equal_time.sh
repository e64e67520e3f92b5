#!/usr/bin/env bash
# Issue 24 item 4: every comparison method trained for the same wall time on this CPU, one at a
# time, then scored by one FID protocol (pytorch_fid, N generated images vs the cached
# statistics of the full 10k test split) beside the real-data floor at the same N.
#   per DATASET (mnist fashion_mnist) and METHOD (gan dcgan vae vae_gan ddpm):
#     train  --config.train.time_budget_s=$BUDGET into $ROOT/$DATASET/$METHOD (resumes; the
#            checkpoints carry the clock); the training wall and CPU seconds go into its records
#     eval   --mode=eval, N=$N samples (image i from key i of the eval stream) -> eval/fid_*.json
#   floor    per dataset: the first N training images vs the same test statistics
# Usage: nohup bash results/baselines/equal_time.sh [STEPS] > /work/runs/equal_time.log 2>&1 &
#   STEPS: default "stats train eval floor". Env: ROOT, DATASETS, METHODS, BUDGET (s), N,
#   DATA_DIR, WEIGHTS. Run nothing else meanwhile: the budget is wall time.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-/work/runs/equal_time}
DATASETS=${DATASETS:-mnist fashion_mnist}
METHODS=${METHODS:-gan dcgan vae vae_gan ddpm}
BUDGET=${BUDGET:-1200}
N=${N:-2000}
DATA_DIR=${DATA_DIR:-$HOME/tensorflow_datasets}
SHARED=$(cd .. && pwd)/shared/data
WEIGHTS=${WEIGHTS:-$SHARED/inception-2015-12-05_fid_torchscript.pt}
STEPS=${1:-stats train eval floor}
stamp() { echo "== $(date -u +%FT%TZ) $*"; }

config_of() {  # METHOD -> the MNIST recipe (the dataset is switched by an override)
  case $1 in
    gan) echo configs/gan_mnist.py ;; dcgan) echo configs/dcgan_mnist.py ;;
    vae) echo configs/vae_mnist.py ;; vae_gan) echo configs/vae_gan_mnist.py ;;
    ddpm) echo configs/mnist_quality_cpu.py ;;
  esac
}
extra_of() {  # METHOD -> its overrides for a $BUDGET-second run
  case $1 in
    # the quality recipe's decay, 10x over the steps the budget allows (~0.93 steps/s measured)
    ddpm) echo "--config.train.lr_decay_steps=$(( BUDGET * 93 / 1000 ))" \
               "--config.sample.guidance=1.5" ;;
    *) echo "" ;;
  esac
}

for step in $STEPS; do
  for ds in $DATASETS; do
    common=(--config.data.dataset="$ds" --config.data.data_dir="$DATA_DIR"
            --config.fid.weights="$WEIGHTS" --config.fid.ref_split=test)
    case $step in
      stats) stamp "$ds: test statistics (pytorch_fid; cached once)"
         nice -n 2 python -m diffusion_jax.main --config=configs/mnist_quality_cpu.py \
           "${common[@]}" --workdir="$ROOT/$ds/stats" --mode=fid_stats \
           --config.fid.protocol=pytorch_fid ;;
      train|eval) for m in $METHODS; do
         out="$ROOT/$ds/$m"
         # shellcheck disable=SC2046
         args=(--config="$(config_of "$m")" "${common[@]}" --workdir="$out" $(extra_of "$m"))
         if [ "$step" = train ]; then
           stamp "$ds/$m: train for $BUDGET s"
           nice -n 2 python -m diffusion_jax.main "${args[@]}" \
             --config.train.time_budget_s="$BUDGET" --config.train.num_steps=1000000 \
             --config.train.keep_checkpoints=2 --config.train.ckpt_every=500
         else
           ls "$out"/eval/fid_*.json >/dev/null 2>&1 && continue
           stamp "$ds/$m: FID at N=$N"
           nice -n 2 python -m diffusion_jax.main "${args[@]}" --mode=eval \
             --config.fid.eval_samples="$N" --config.fid.protocol=pytorch_fid
         fi
       done ;;
      floor) stamp "$ds: real-data floor at N=$N"
         stats=$(ls ~/.cache/diffusion_jax/fid_stats/"$ds"-test-pytorch_fid-*.npz | head -1)
         npz=$ROOT/$ds/train_first_$N.npz
         [ -e "$npz" ] || python - "$ds" "$DATA_DIR" "$N" "$npz" <<'PY'
import sys
import numpy as np
from diffusion_jax import data
ds, data_dir, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
split = data.load_split(ds, "train", data_dir=data_dir, progress=False)
np.savez(out, x=np.asarray(split.images[0][:n]))  # one shard: the stored order
PY
         nice -n 2 python -m diffusion_jax.fid "$npz" "$stats" --protocol=pytorch_fid \
           --weights="$WEIGHTS" --batch_size=100 --no_progress | tee "$ROOT/$ds/floor_N$N.txt" ;;
    esac
  done
done
stamp done
