#!/usr/bin/env bash
# Issue 28's recipe A/B: each variant (a config of the package) trained for the same short
# budget, then scored the same way, so the recipes are compared at equal CPU minutes.
#   train  each variant for BUDGET minutes of wall time (the checkpoints carry the clock, so it
#          resumes), the learning-rate stairs scaled to the shorter run: lr_decay_steps =
#          round(850 * BUDGET / 150), v2's 10 stairs of 850 steps over 150 minutes
#   eval   FID of the last checkpoint's EMA at N = SWEEP_N samples (pytorch_fid, against the
#          cached statistics of the 10k test split; computed first if missing, ~18 min),
#          DPM-Solver++ 2M SDE, 40 steps, guidance 1.5 -> $ROOT/<variant>/eval/fid_<step>.json
#   table  variant, steps, images, train wall, the last held-out loss (the unweighted eps-MSE of
#          every variant, from $ROOT/<variant>/metrics.jsonl) and FID, as a Markdown table
# A variant whose eval record exists is skipped by train and eval (delete it to redo).
# Usage: nohup bash results/quality/recipe_ab.sh [STEPS] > /work/runs/recipe_ab.log 2>&1 &
#   STEPS: default "train eval table". Env: ROOT, VARIANTS, BUDGET (minutes), SWEEP_N, DATA_DIR,
#   WEIGHTS.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-/work/runs/recipe_ab}
VARIANTS=${VARIANTS:-mnist_quality_cpu_v2 mnist_quality_cpu_minsnr}
BUDGET=${BUDGET:-30}  # minutes of training per variant
SWEEP_N=${SWEEP_N:-1000}  # samples of each FID
DATA_DIR=${DATA_DIR:-$HOME/tensorflow_datasets}
SHARED=$(cd .. && pwd)/shared/data
WEIGHTS=${WEIGHTS:-$SHARED/inception-2015-12-05_fid_torchscript.pt}
STEPS=${1:-train eval table}
budget_s=$(awk -v b="$BUDGET" 'BEGIN { printf "%.1f", b * 60 }')
decay=$(awk -v b="$BUDGET" 'BEGIN { d = int(850 * b / 150 + 0.5); print (d < 1 ? 1 : d) }')
stamp() { echo "== $(date -u +%FT%TZ) $*"; }
scored() { ls "$ROOT/$1"/eval/fid_*.json >/dev/null 2>&1; }
main() {  # main VARIANT FLAGS...: the variant's config with the A/B's shared overrides
  local v=$1
  shift
  nice -n 2 python -m diffusion_jax.main --config="$v" --workdir="$ROOT/$v" \
    --config.data.data_dir="$DATA_DIR" --config.fid.weights="$WEIGHTS" \
    --config.train.time_budget_s="$budget_s" --config.train.lr_decay_steps="$decay" "$@"
}

for step in $STEPS; do
  case $step in
    train) for v in $VARIANTS; do
         if scored "$v"; then continue; fi
         stamp "train $v: $BUDGET min, lr_decay_steps=$decay (resumes)"
         main "$v" || stamp "training of $v failed (exit $?)"
       done ;;
    eval) for v in $VARIANTS; do
         if scored "$v"; then continue; fi
         if [ ! -d "$ROOT/$v/checkpoints" ]; then stamp "eval $v: not trained"; continue; fi
         stamp "eval $v: N=$SWEEP_N, dpm++2m_sde, 40 steps, guidance 1.5"
         main "$v" --mode=eval --config.sample.sampler=dpm++2m_sde \
           --config.sample.num_steps=40 --config.sample.guidance=1.5 \
           --config.fid.eval_samples="$SWEEP_N" --config.fid.protocol=pytorch_fid \
           || stamp "eval of $v failed (exit $?)"
       done ;;
    table) python - "$ROOT" $VARIANTS <<'EOF'
import json, pathlib, sys
from diffusion_jax import records
root, variants = pathlib.Path(sys.argv[1]), sys.argv[2:]
print("| variant | steps | images | train wall | held-out loss (step) | FID (N) |")
print("|---|---|---|---|---|---|")
for v in variants:
    run = root / v
    metrics = run / records.METRICS_FILE
    logged = records.read_metrics(str(metrics)) if metrics.is_file() else []
    held = [m for m in logged if "heldout_loss" in m]
    loss = f"{held[-1]['heldout_loss']:.5f} ({held[-1]['step']})" if held else "-"
    evals = sorted(run.glob("eval/fid_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    if not evals:
        print(f"| {v} | - | - | - | {loss} | not scored |")
        continue
    r = json.loads(evals[-1].read_text())
    wall = f"{r['train_wall_s'] / 60:.1f} min" if r.get("train_wall_s") is not None else "-"
    fid = f"{r['fid']['pytorch_fid']:.2f} ({r['num_samples']})"
    print(f"| {v} | {r.get('train_steps', '-')} | {r.get('images_seen', '-')} | {wall} | "
          f"{loss} | {fid} |")
EOF
       ;;
    *) echo "unknown step $step (use train, eval, table)" >&2; exit 2 ;;
  esac
done
stamp done
