#!/usr/bin/env bash
# Makes the carry folders for a GPU job, here, before any device call: gpu_carry/BUNDLE/partK.
#
#   bash launch/gpu/prepare_local.sh mnist      # issue 15: MNIST + FID weights + wheels (3 parts)
#   bash launch/gpu/prepare_local.sh cifar10    # issue 16: CIFAR-10 + FID weights + wheels (5 parts)
#   bash launch/gpu/prepare_local.sh bench      # issue 14: FID weights + the peer's wheels (2 parts)
#
# Each device call carries the working tree (tracked + untracked-not-ignored files, and shared/
# when the checkout has one) plus its carry paths, 64 MiB in all. The payload (the wheels the
# machine lacks, the dataset .npz, the 87 MB FID weights) is larger than that, so
# launch/gpu/relay.py lays it end to end (wheels, dataset, weights: setup can start before the
# weights have arrived) and cuts it into parts of 64 MiB - tree - MARGIN bytes; each call carries
# one part folder, which launch/gpu/on_device.sh copies to /tmp/djax/ on the machine.
#
# Checks: the source files' sha256 against ../shared/data/PROVENANCE.md, and for every part that
# tree + part < 64 MiB. Prints the device-tool calls to make (launch/gpu/README.md has them too).
#
# Env: SHARED (default ../shared), MARGIN (bytes kept free per call, default 2 MiB),
# WHEELS (a folder of py3.12 wheels; default gpu_carry/wheels, filled by
# $SHARED/tools/gpu-wheels-py312 when empty), DRY_SUBSET=N (the dry run: only the first N train
# and N/4 test images of the dataset, written to gpu_carry/subset/).
set -euo pipefail
bundle=${1:?usage: prepare_local.sh mnist|cifar10|bench}
cd "$(git rev-parse --show-toplevel)"
shared=${SHARED:-../shared}
margin=${MARGIN:-$((2 * 1024 * 1024))}
limit=$((64 * 1024 * 1024))
wheels=${WHEELS:-gpu_carry/wheels}
weights_name=inception-2015-12-05_fid_torchscript.pt
case "$bundle" in
  mnist | cifar10) sources=("$bundle.npz" "$weights_name") ;;
  # The benchmarks train on synthetic data: no dataset, no TFDS reader; diffusers for the peer.
  bench) sources=("$weights_name") ;;
  *) echo "unknown bundle $bundle (mnist, cifar10 or bench)" >&2; exit 2 ;;
esac
grep -qx '/gpu_carry/' .gitignore || { echo "/gpu_carry/ must be in .gitignore" >&2; exit 2; }

# 1. The sources, checked against PROVENANCE.md.
provenance=$shared/data/PROVENANCE.md
for f in "${sources[@]}"; do
  want=$(grep -F "\`data/$f\`" "$provenance" | grep -oE '[0-9a-f]{64}' | head -1)
  have=$(sha256sum "$shared/data/$f" | cut -d' ' -f1)
  [[ -n "$want" && "$want" == "$have" ]] || { echo "sha256 of $shared/data/$f: $have, PROVENANCE.md: ${want:-none}" >&2; exit 1; }
  echo "ok  $f  sha256 $have (PROVENANCE.md)"
done
data_file=$shared/data/$bundle.npz
if [[ -n "${DRY_SUBSET:-}" && $bundle != bench ]]; then  # a small dataset for CPU dry runs (same keys, first images)
  mkdir -p gpu_carry/subset
  data_file=gpu_carry/subset/$bundle.npz
  python3 - "$shared/data/$bundle.npz" "$data_file" "$DRY_SUBSET" <<'EOF'
import sys, numpy as np
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
z = np.load(src)
np.savez_compressed(dst, x_train=z["x_train"][:n], y_train=z["y_train"][:n],
                    x_test=z["x_test"][: n // 4], y_test=z["y_test"][: n // 4])
EOF
  echo "dry run: $data_file holds the first $DRY_SUBSET train and $((DRY_SUBSET / 4)) test images"
fi

# 2. The wheels the machine lacks: the quality jobs need the TFDS reader, not diffusers (the
# benchmarks' PyTorch peer only); the benchmarks need diffusers, not the TFDS reader.
if ! compgen -G "$wheels/*.whl" >/dev/null; then
  bash "$shared/tools/gpu-wheels-py312" "$wheels"
fi
if [[ $bundle == bench ]]; then
  mapfile -t wheel_files < <(ls "$wheels"/*.whl | grep -vE '/(tensorflow_datasets|array_record)-')
else
  mapfile -t wheel_files < <(ls "$wheels"/*.whl | grep -v '/diffusers-')
fi

# 3. The tree that travels with every call.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null |
  awk '{s += $1} END {print s + 0}')
if [[ -d shared ]]; then tree=$((tree + $(du -sb shared | cut -f1))); fi
part_bytes=$((limit - tree - margin))
echo "tree: $tree bytes (tracked + untracked-not-ignored); part size: $part_bytes bytes"
((part_bytes > 8 * 1024 * 1024)) || { echo "the tree leaves no room for a part" >&2; exit 1; }

# 4. Pack: wheels, dataset, weights.
files=()
for w in "${wheel_files[@]}"; do files+=("wheels/$(basename "$w")=$w"); done
# A fallback flax (pure Python, 0.5 MB): the code needs flax >= 0.12 (nnx.List) and the machine's
# flax version was never read; on_device.sh installs it only if the machine's flax lacks nnx.List.
fallback=gpu_carry/fallback
if ! compgen -G "$fallback/flax-*.whl" >/dev/null; then
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$fallback" "flax==${FLAX_FALLBACK:-0.12.8}"
fi
for w in "$fallback"/flax-*.whl; do files+=("fallback/$(basename "$w")=$w"); done
# And protobuf 6.31.1 (0.3 MB) for the TFDS reader: tensorflow_metadata's generated code refuses
# an older protobuf runtime; installed only if the machine's protobuf is refused.
if [[ $bundle != bench ]]; then
  if ! compgen -G "$fallback/protobuf-*.whl" >/dev/null; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      -d "$fallback" protobuf==6.31.1
  fi
  for w in "$fallback"/protobuf-*.whl; do files+=("fallback/$(basename "$w")=$w"); done
fi
[[ $bundle == bench ]] || files+=("$bundle.npz=$data_file")
files+=("$weights_name=$shared/data/$weights_name")
python3 launch/gpu/relay.py pack --out "gpu_carry/$bundle" --part-bytes "$part_bytes" "${files[@]}"

# 5. Every call under 64 MiB.
n=$(ls -d gpu_carry/"$bundle"/part* | wc -l)
for k in $(seq 1 "$n"); do
  part=$(du -sb "gpu_carry/$bundle/part$k" | cut -f1)
  total=$((tree + part))
  ((total < limit)) || { echo "call $k: $total bytes >= 64 MiB" >&2; exit 1; }
  printf 'call %d: carry gpu_carry/%s/part%d  tree + part = %d bytes (%d.%d MiB)\n' \
    "$k" "$bundle" "$k" "$total" $((total / 1048576)) $((total % 1048576 * 10 / 1048576))
done
echo
echo "Device calls, back to back (the machine stays warm 30 s after each):"
for k in $(seq 1 "$n"); do
  last=""
  ((k == n)) && last=" JOB"
  echo "  run(command=\"bash launch/gpu/on_device.sh $bundle $k$last\", carry=[\"gpu_carry/$bundle/part$k\"])"
done
echo "JOB: mnist_fast (bundle mnist); cifar10_schedules or cifar10_fast (bundle cifar10); bench (bundle bench)."
