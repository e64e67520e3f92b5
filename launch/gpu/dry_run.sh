#!/usr/bin/env bash
# The CPU dry run of a staged GPU job: prepare_local.sh with a subset dataset, then every
# device call's on_device.sh in turn, with a local folder standing in for the machine's /tmp
# and a CPU-sized model and budget. It checks the relay, the setup, the job and what lands in
# $OUT; it says nothing about GPU speed or FID.
#
#   bash launch/gpu/dry_run.sh mnist mnist_fast
#   bash launch/gpu/dry_run.sh cifar10 cifar10_schedules
#   bash launch/gpu/dry_run.sh bench bench      # benchmarks/h200.sh with TINY=1
#
# Env: DRY_ROOT (default /tmp/djax_dry), MARGIN (default 20 MB: smaller parts, so the subset
# still needs several calls), SUBSET (train images, default 64; test: a quarter), EVAL (FID
# samples per run, default 32). Everything runs under nice -n 19.
set -euo pipefail
bundle=${1:?usage: dry_run.sh BUNDLE JOB}
job=${2:?usage: dry_run.sh BUNDLE JOB}
cd "$(dirname "$0")/../.."
dry=${DRY_ROOT:-/tmp/djax_dry}
rm -rf "$dry"
DRY_SUBSET=${SUBSET:-64} MARGIN=${MARGIN:-20000000} nice -n 19 bash launch/gpu/prepare_local.sh "$bundle"
n=$(ls -d gpu_carry/"$bundle"/part* | wc -l)
# A CPU-sized U-Net, batch and budget; every other setting is the job's config.
small=(
  --config.model.ch=16 "--config.model.ch_mult=(1,2)" --config.model.num_res_blocks=1
  "--config.model.attn_resolutions=()" --config.model.num_groups=8 --config.model.dtype=float32
  --config.train.batch_size=32 --config.train.steps_per_call=1 --config.train.warmup_steps=10
  --config.train.log_every=10 --config.train.sample_every=20 --config.train.ckpt_every=20
  --config.train.heldout_examples=16 "--config.fid.eval_samples=${EVAL:-32}" --config.fid.batch_size=16
  --config.sample.batch_size=32 --config.sample.num_steps=5 --config.train.tensorboard=False
)
if [[ $job == bench ]]; then
  extra=()
  export TINY=1
  # The machine has no TFDS reader and the bench bundle brings none: make sure nothing needs it.
  for m in tensorflow_datasets array_record; do
    mkdir -p "$dry/site/$m"
    echo "raise ImportError('$m is not on the GPU machine and the bench bundle carries none')" \
      >"$dry/site/$m/__init__.py"
  done
  # And an old flax without nnx.List, so that the carried fallback flax is installed and used.
  mkdir -p "$dry/site/flax/nnx"
  echo "" >"$dry/site/flax/__init__.py"
  echo "Module = object  # flax < 0.12: no List" >"$dry/site/flax/nnx/__init__.py"
elif [[ $job == cifar10_schedules ]]; then
  extra=("${small[@]}")
  export TRAIN_S=20
else
  extra=("${small[@]}" --config.train.time_budget_s=20 --config.fid.num_samples=16
    --config.fid.every=20)
fi
for k in $(seq 1 "$n"); do
  last=""
  ((k == n)) && last=$job
  echo "=== call $k/$n: on_device.sh $bundle $k $last"
  ROOT=$dry TFDS=$dry/tfds OUT=$dry/out SKIP_WHEELS=1 DRY_RUN=1 JOB_ARGS="${extra[*]}" \
    JAX_PLATFORMS=cpu nice -n 19 bash launch/gpu/on_device.sh "$bundle" "$k" $last
done
echo "=== what comes back from \$OUT:"
ls -la "$dry/out"
# The dry run's parts hold a subset dataset: never let a device call carry them.
rm -rf "gpu_carry/$bundle" gpu_carry/subset
echo "removed gpu_carry/$bundle (dry-run parts); run prepare_local.sh $bundle before the device calls"
