#!/usr/bin/env bash
# The denoiser and Deep Image Prior rows of results/baselines.md, through the product's CLI
# (train, then --mode=sample for the report), CPU-sized as the table says:
#   bash results/baselines/denoiser_dip.sh DATA_DIR [RUNS]      (session 5: 2-core CPU)
# Copies each report's JSON and figures into results/baselines/.
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:?usage: denoiser_dip.sh DATA_DIR [RUNS]}
runs=${2:-runs/baselines}
out=results/baselines
run() {  # NAME CONFIG FLAGS...: train from scratch, then the report
  local name=$1 config=$2 wd=$runs/$1
  shift 2
  rm -rf "$wd"
  /usr/bin/time -f "$name: %e s wall, %U s user + %S s system" \
    python3 -m diffusion_jax.main --mode=train "--config=$config" "--workdir=$wd" \
    "--config.data.data_dir=$data" "$@"
  python3 -m diffusion_jax.main --mode=sample "--config=$config" "--workdir=$wd" \
    "--config.data.data_dir=$data" "$@"
}
# The denoiser at sigma 0.5: D = 32 (the course: 128), batch 64, Adam 1e-3, 200 steps; the
# report on the first 200 test images.
run denoiser configs/denoiser_mnist.py --config.denoiser.hidden=32 \
  --config.train.batch_size=64 --config.train.lr=1e-3 --config.train.num_steps=200 \
  --config.train.log_every=20 --config.train.ckpt_every=200 \
  --config.denoiser.eval_images=200 --config.sample.batch_size=100
cp "$runs/denoiser/report/denoiser.json" "$out/denoiser.json"
cp "$runs/denoiser/report/denoiser_sigmas.png" "$out/denoiser_sigmas.png"
# DIP: images 0-7 of the train split (as the table; the configs' default is now the test split,
# dip_prior.sh); MNIST 800 iterations, CIFAR-10 300.
run dip_mnist configs/dip.py --config.dip.split=train --config.train.num_steps=800 \
  --config.train.ckpt_every=400
run dip_cifar10 configs/dip_cifar10.py --config.dip.split=train --config.train.num_steps=300 \
  --config.train.ckpt_every=300
for d in mnist cifar10; do
  cp "$runs/dip_$d/report/dip.json" "$out/dip_$d.json"
  cp "$runs/dip_$d/report/dip.png" "$out/dip_$d.png"
  cp "$runs/dip_$d/report/psnr.png" "$out/dip_${d}_psnr.png"
done
