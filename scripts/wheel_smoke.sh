#!/usr/bin/env bash
# The installed package, not the checkout: build the wheel, install it into a fresh virtualenv,
# and from a folder outside the repository run what the README's quick start runs (a shipped
# model's sample, data import, a short training run by recipe name, sampling it).
# Usage: bash scripts/wheel_smoke.sh [WORK_DIR]   (CI runs it before the suite; REUSE_VENV=1
# with the WORK_DIR of an earlier run reinstalls only the wheel)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
shared=${SHARED:-$repo/../shared}
mkdir -p "$work"
export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install -q build
rm -rf "$work/dist" "$work/run" "$work"/out_*
python3 -m build --wheel --outdir "$work/dist" "$repo" >"$work/build.log" 2>&1 || {
  tail -20 "$work/build.log"; exit 1; }
if [ "${REUSE_VENV:-0}" = 1 ] && [ -x "$work/venv/bin/python" ]; then  # a rerun: the wheel only
  "$work/venv/bin/pip" install -q --no-deps --force-reinstall "$work"/dist/diffusion_jax-*.whl
else
  rm -rf "$work/venv"
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q "$work"/dist/diffusion_jax-*.whl
fi
cd "$work"  # nothing of the repository is importable from here
py="$work/venv/bin/python"
want=$(grep -m1 '^version' "$repo/pyproject.toml" | cut -d'"' -f2)
have=$("$py" -c 'import diffusion_jax, sys; print(diffusion_jax.__version__); assert "site-packages" in diffusion_jax.__file__, diffusion_jax.__file__')
[ "$have" = "$want" ] || { echo "version $have, pyproject says $want"; exit 1; }
for name in $("$py" -c 'from diffusion_jax import pretrained; print(*pretrained.available())'); do
  "$work/venv/bin/diffusion-jax" --pretrained="$name" --mode=sample --workdir="out_$name" \
    --config.sample.num_samples=2 --config.sample.batch_size=2 --config.sample.num_steps=4
  test -s "out_$name/sample/grid.png"
done
"$py" -m diffusion_jax.data import --dataset=mnist --npz="$shared/data/mnist.npz" --data_dir="$work/tfds" >/dev/null 2>&1
fast=(--config.data.data_dir="$work/tfds" --config.train.num_steps=4 --config.train.log_every=2
      --config.train.ckpt_every=4 --config.train.sample_every=0 --config.train.tensorboard=False)
"$work/venv/bin/diffusion-jax" --config=tiny --workdir=run "${fast[@]}"
"$work/venv/bin/diffusion-jax" --config=tiny --workdir=run --mode=sample "${fast[@]}" \
  --config.sample.num_samples=4 --config.sample.sampler=ddim --config.sample.num_steps=5
test -s run/sample/grid.png && test -s run/sample/samples.npz
"$work/venv/bin/diffusion-jax-fid" --help >/dev/null
echo "wheel smoke: diffusion_jax $have installed from the wheel, trained and sampled outside the checkout"
