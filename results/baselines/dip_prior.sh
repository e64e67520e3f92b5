#!/usr/bin/env bash
# The "DIP as a prior for DDPM" rows of results/baselines.md on held-out images (issue 24
# item 2), through the product's CLI:
#   bash results/baselines/dip_prior.sh DATA_DIR [RUNS]
# DIP as denoiser_dip.sh's MNIST row (configs/dip.py, 800 iterations, images 0-7) but on the
# test split, its report, then --mode=dip_prior with the shipped class-conditional MNIST DDPM
# (diffusion_jax/pretrained/mnist_cond, trained on the train split; null label), seed 0, stride
# 10, eta 1 (config.dip_prior's defaults). Copies the tables and figure into results/baselines/.
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:?usage: dip_prior.sh DATA_DIR [RUNS]}
runs=${2:-runs/baselines}
out=results/baselines
dip=$runs/dip_mnist_test
flags=(--config=configs/dip.py "--config.data.data_dir=$data" --config.dip.split=test
  --config.train.num_steps=800 --config.train.ckpt_every=400)
rm -rf "$dip" "$runs/dip_prior_mnist_cond"
/usr/bin/time -f "dip_mnist_test: %e s wall, %U s user + %S s system" \
  python3 -m diffusion_jax.main --mode=train "--workdir=$dip" "${flags[@]}"
python3 -m diffusion_jax.main --mode=sample "--workdir=$dip" "${flags[@]}"
/usr/bin/time -f "dip_prior: %e s wall, %U s user + %S s system" \
  python3 -m diffusion_jax.main --mode=dip_prior --pretrained=mnist_cond \
  "--workdir=$runs/dip_prior_mnist_cond" --config.seed=0 "--config.dip_prior.dip_workdir=$dip"
for f in json md png; do
  cp "$runs/dip_prior_mnist_cond/dip_prior/dip_prior.$f" "$out/dip_prior.$f"
done
cp "$dip/report/dip.json" "$out/dip_mnist_test.json"
