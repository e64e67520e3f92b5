#!/usr/bin/env bash
# Issue 16(a) in one command: CIFAR-10, the same model and recipe (configs/cifar10_fast.py) with
# three noise schedules, trained on equal images, then FID of 10k samples against the 50k train
# images under both protocols (tf and pytorch_fid):
#
#   bash launch/gpu/cifar10_schedules.sh WORKROOT      # WORKROOT/{linear_T1000,linear_T300,cosine_T300}
#
# Run 1 (linear T=1000) trains for TRAIN_S seconds (--config.train.time_budget_s: from the start
# of training, compile and data loading included); runs 2 and 3 (linear T=300, cosine T=300) then
# train exactly as many steps (--config.train.num_steps = run 1's train_steps), so the three see
# the same images. The three processes share the FID cache ($DJAX_CACHE_DIR: the converted
# Inception weights and the train-set reference statistics, computed once, by run 1) and JAX's
# persistent compilation cache ($DJAX_COMPILATION_CACHE). WORKROOT/summary.json lists the three
# records; WORKROOT/schedules.md is their table.
#
# Sampler: DPM-Solver++(2M), 25 steps (SAMPLER, STEPS), not DDPM's T-step chain: 10k samples of
# the 35.7M U-Net cost 12.44 GFLOP x steps each, and 1000 steps x 3 runs do not fit (below).
#
# Cost estimate (no GPU has run this yet; analytic FLOPs from results/benchmarks.md, H200 dense
# bf16 peak 989 TFLOP/s at 30-40% MFU = 300-400 TFLOP/s; the Inception runs in float32 at
# Precision.HIGHEST, fp32 peak ~67 TFLOP/s, taken as 25-40 TFLOP/s):
#   reference stats, once: 50k images x 2 protocols x 11.42 GFLOP = 1.14 PFLOP  -> 29-46 s
#   + Inception weights, 2 extractor compiles                                     -> ~25 s
#   training, 3 x TRAIN_S (compile of the train step inside it)                   -> 3 x 70 s = 210 s
#   (at 300-400 TFLOP/s a 37.3 GFLOP train image: 8-11k img/s, ~0.3M images in 35 s after compile)
#   10k samples x 25 steps x 12.44 GFLOP = 3.1 PFLOP per run                      -> 3 x 8-10 s
#   (DDIM 100: 12.4 PFLOP = 31-41 s per run; DDPM 1000 steps: 311-415 s per run: does not fit)
#   their features, 20k x 11.42 GFLOP = 0.23 PFLOP per run                        -> 3 x 6-9 s
#   sampler compile (~20 s), process start + JAX init (~10 s), saves (~5 s)       -> 3 x ~35 s
#   total                                                                          -> ~430-465 s
# So TRAIN_S=70 is what fits 8 minutes with a margin; "~2 min each" (TRAIN_S=120) would take
# ~580-615 s. Raise TRAIN_S once a GPU run has measured the fixed costs (the records hold
# train_wall_s, total_wall_s, sampling_and_features_wall_s).
#
# Warm-up: WARMUP (100) steps, not cifar10_fast.py's 1000: 70 s of which the compile takes a part
# leave a few hundred steps at batch 512, and the learning rate must reach its peak in them.
# A run that fails is recorded as failed and the next one still runs (equal steps then fall back
# to the time budget if run 1 left no record).
#
# Env: TRAIN_S (70), WARMUP (100), SAMPLER (dpm++2m), STEPS (25), DATA_DIR (TFDS data dir),
# EXTRA_ARGS (more --config.* flags for all three runs, e.g. the CPU dry run's), PYTHON (python3).
set -euo pipefail
root=${1:?usage: cifar10_schedules.sh WORKROOT}
cd "$(dirname "$0")/../.."
train_s=${TRAIN_S:-70}
sampler=${SAMPLER:-dpm++2m}
steps=${STEPS:-25}
py=${PYTHON:-python3}
mkdir -p "$root"
common=(
  -m diffusion_jax.main --mode=train_and_eval --config=configs/cifar10_fast.py
  --config.fid.protocol=both --config.fid.eval_samples=10000
  --config.fid.every=0 --config.fid.num_samples=0 --config.train.best_metric=auto
  "--config.sample.sampler=$sampler" "--config.sample.num_steps=$steps"
  "--config.train.warmup_steps=${WARMUP:-100}"
)
[[ -n "${DATA_DIR:-}" ]] && common+=("--config.data.data_dir=$DATA_DIR")
# shellcheck disable=SC2206
extra=(${EXTRA_ARGS:-})
started=$(date +%s%N)
failed=0
runs=("linear 1000" "linear 300" "cosine 300")
num_steps=""
for spec in "${runs[@]}"; do
  read -r schedule t <<<"$spec"
  name=${schedule}_T$t
  if [[ -z "$num_steps" ]]; then
    budget=(--config.train.time_budget_s="$train_s")
  else  # equal images: run 1's steps, with a guard budget
    budget=(--config.train.num_steps="$num_steps" --config.train.time_budget_s="$((train_s + 60))")
  fi
  echo "== $name ($(date -u +%T)): ${budget[*]}"
  if ! "$py" "${common[@]}" --workdir="$root/$name" --config.diffusion.schedule="$schedule" \
    --config.diffusion.num_timesteps="$t" "${budget[@]}" "${extra[@]}"; then
    echo "== $name FAILED (exit code above); going on with the next schedule"
    failed=1
  fi
  if [[ -z "$num_steps" && -f $root/$name/quality.json ]]; then
    num_steps=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["train_steps"])' \
      "$root/$name/quality.json")
    echo "== runs 2 and 3 train $num_steps steps, as run 1 did"
  fi
done
wall_ms=$(( ($(date +%s%N) - started) / 1000000 ))
wall=$(( wall_ms / 1000 )).$(printf %03d $(( wall_ms % 1000 )))
"$py" - "$root" "$wall" "$train_s" <<'EOF'
import json, sys
from pathlib import Path
root, wall, train_s = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
names = ["linear_T1000", "linear_T300", "cosine_T300"]
records = {n: json.loads((root / n / "quality.json").read_text())
           for n in names if (root / n / "quality.json").is_file()}
summary = {"command_wall_s": round(wall, 1), "train_s": train_s, "runs": records}
(root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
lines = ["| schedule | T | train steps | images | train s | sampler | FID tf | FID pytorch_fid | run wall s |",
         "|---|---|---|---|---|---|---|---|---|"]
for n, r in records.items():
    fid = r["fid"]
    lines.append(f"| {r['schedule']} | {r['num_timesteps']} | {r['train_steps']} | {r['images_seen']} "
                 f"| {r['train_wall_s']} | {r['sampler']} {r['steps']} | {fid.get('tf', float('nan')):.2f} "
                 f"| {fid.get('pytorch_fid', float('nan')):.2f} | {r['total_wall_s']} |")
lines += [f"| {n} | failed: no quality.json |" for n in names if n not in records]
lines.append(f"\nWhole command: {wall:.1f} s (limit 480 s).")
(root / "schedules.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
exit "$failed"
